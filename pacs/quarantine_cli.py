"""``pacs quarantine list|release|discard``: resolve objects held for an identity conflict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pacs.config import Settings

quarantine_app = typer.Typer(
    help="Objects held for a patient identity conflict: list, release, discard.",
    no_args_is_help=True,
)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]
Entries = Annotated[list[int], typer.Argument(help="Quarantine entry numbers (see list).")]


def _settings(data_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    return Settings(**overrides)


@quarantine_app.command("list")
def list_(
    study: Annotated[
        str | None, typer.Option("--study", help="Only this Study Instance UID.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """List the held objects: entry, UIDs, the patient they name, why they are held."""
    from rich.console import Console
    from rich.table import Table

    from pacs.index.engine import create_index_engine
    from pacs.ingest.quarantine import list_held

    engine = create_index_engine(_settings(data_dir))
    try:
        entries = list_held(engine, study)
    finally:
        engine.dispose()
    table = Table(title=f"quarantine: {len(entries)} objects")
    for column in ("entry", "study / series / instance", "patient", "reason", "from", "received"):
        table.add_column(column)
    for held in entries:
        table.add_row(
            str(held.pk),
            f"{held.study_instance_uid}\n{held.series_instance_uid}\n{held.sop_instance_uid}",
            f"{held.patient_id} ({held.issuer_of_patient_id or 'no issuer'})\n"
            f"{held.patient_name}\n{held.patient_birth_date} {held.patient_sex}",
            held.reason,
            held.source_ae_title or held.source_channel,
            held.received_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console().print(table)


@quarantine_app.command("release")
def release_(
    entries: Entries,
    as_new_study: Annotated[
        bool,
        typer.Option(
            "--as-new-study",
            help="Give the objects new Study/Series/SOP Instance UIDs (originals kept in "
            "OriginalAttributesSequence).",
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Ingest held objects again, with the identity check; exit 1 if any is still held."""
    from pacs.ingest.quarantine import QuarantineError
    from pacs.ingest.release import release
    from pacs.runtime import build_ingest

    ingest = build_ingest(_settings(data_dir))
    failed = False
    for pk in entries:
        try:
            done = release(ingest, pk, as_new_study)
        except QuarantineError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed = True
            continue
        if done.released:
            outcome = done.outcome
            typer.echo(f"released {pk}: {outcome.sop_instance_uid} in {outcome.study_instance_uid}")
        else:
            typer.echo(f"still held {pk}: {done.outcome.status}: {done.outcome.reason}", err=True)
            failed = True
    raise typer.Exit(1 if failed else 0)


@quarantine_app.command("discard")
def discard_(entries: Entries, data_dir: DataDir = None) -> None:
    """Delete held objects; exit 1 if an entry does not exist."""
    from pacs.ingest.quarantine import QuarantineError
    from pacs.ingest.release import discard
    from pacs.runtime import build_ingest

    ingest = build_ingest(_settings(data_dir))
    failed = False
    for pk in entries:
        try:
            held = discard(ingest, pk)
        except QuarantineError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed = True
            continue
        typer.echo(f"discarded {pk}: {held.sop_instance_uid}")
    raise typer.Exit(1 if failed else 0)
