"""``pacs worklist import FILE...``: DCMTK worklist items and HL7 v2 orders into
ServiceRequests (sites migrating from a DCMTK/Orthanc worklist folder or an HL7 RIS feed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from pacs.archive_location import Init, open_archive
from pacs.config import Settings

worklist_app = typer.Typer(help="Modality Worklist: import scheduled steps.", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def hl7_messages(data: bytes) -> list[bytes]:
    """The messages of an HL7 file: MLLP frames, or messages each starting with ``MSH``."""
    text = data.replace(b"\x1c", b"").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    parts = [p.strip(b"\r\x0b ") for p in text.replace(b"\x0b", b"\r").split(b"\rMSH")]
    return [p if p.startswith(b"MSH") else b"MSH" + p for p in parts if p]


@worklist_app.command("import")
def import_items(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Load DCMTK ``.wl`` / dcmdump worklist items and HL7 v2 ORM^O01 / OMI^O23 messages as
    active ServiceRequests (an order with the same accession number is replaced); exit 1 if
    one could not be loaded."""
    from pacs.fhir.errors import FhirError
    from pacs.fhir.store import FhirStore
    from pacs.hl7.messages import HL7Error, decode
    from pacs.hl7.receiver import store_message
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import upgrade
    from pacs.worklist.files import WorklistFileError, item_from_dataset, read_dataset
    from pacs.worklist.orders import OrderError, StoredOrder, store_order

    try:
        settings = Settings.load(**({"data_dir": data_dir} if data_dir is not None else {}))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = open_archive(settings, init)
    engine = create_index_engine(settings)
    upgrade(engine)
    store = FhirStore(engine)
    failed = 0

    def report(path: Path, stored: StoredOrder) -> None:
        verb = "created" if stored.created else "updated"
        typer.echo(f"{path}: {verb} ServiceRequest/{stored.service_request['id']}")

    try:
        for path in _files(paths):
            data = path.read_bytes()
            try:
                if data.lstrip(b"\x0b \r\n").startswith(b"MSH"):
                    for raw in hl7_messages(data):
                        report(path, store_message(store, decode(raw)))
                else:
                    report(path, store_order(store, item_from_dataset(read_dataset(path))))
            except (HL7Error, OrderError, WorklistFileError, FhirError) as exc:
                failed += 1
                typer.echo(f"{path}: not imported: {exc}", err=True)
    finally:
        engine.dispose()
    raise typer.Exit(1 if failed else 0)
