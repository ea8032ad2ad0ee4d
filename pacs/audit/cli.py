"""``pacs audit verify``: check the audit trail's hash chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pacs.config import Settings

audit_app = typer.Typer(help="The audit trail: verify its hash chain.", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]


@audit_app.command("verify")
def verify_command(data_dir: DataDir = None) -> None:
    """Seal the audit records written so far, then recompute the hash chain of every one;
    exit 1 when a sealed record was modified, deleted or inserted around the archive."""
    from pacs.audit.chain import verify
    from pacs.index.engine import create_index_engine

    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    engine = create_index_engine(Settings(**overrides))
    try:
        with engine.connect() as conn:
            result = verify(conn)
    finally:
        engine.dispose()
    unchained = f"; {result.unchained} older record(s) unchained" if result.unchained else ""
    if result.ok:
        typer.echo(f"audit chain intact: {result.checked} record(s){unchained}")
        return
    where = f" at seq {result.seq}" if result.seq is not None else ""
    typer.echo(f"audit chain BROKEN{where}: {result.problem} ({result.checked} verified)", err=True)
    raise typer.Exit(1)
