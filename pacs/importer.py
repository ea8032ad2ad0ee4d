"""``pacs import``: load Part-10 files and folders through the ingest path."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.tag import Tag
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.ingest import IngestOutcome, IngestService, Source, StoreStatus
from pacs.runtime import build_ingest

MEDIA_STORAGE_DIRECTORY = b"1.2.840.10008.1.3.10"
DICM_PREFIX = b"DICM"
"""The Part-10 prefix after the 128-byte preamble (PS3.10 7.1)."""
_HEAD_SIZE = 512
_SOP_TAGS = [Tag(0x0008, 0x0016), Tag(0x0008, 0x0018)]  # SOP Class UID, SOP Instance UID


class Skipped(StrEnum):
    """Files a folder may hold that are not objects to import (not counted as refused)."""

    DICOMDIR = "skipped (DICOMDIR)"
    NOT_DICOM = "skipped (not DICOM)"  # manifest.json, README, thumbnails, ...


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Every regular file under ``paths`` (recursively), in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(path)


def is_dicomdir(path: Path, head: bytes) -> bool:
    """True for a DICOMDIR (Media Storage Directory), which indexes files but is not an image."""
    return path.name.upper() == "DICOMDIR" or MEDIA_STORAGE_DIRECTORY in head[:512]


def is_dicom_dataset(path: Path) -> bool:
    """True when a file without the Part-10 prefix still parses as a DICOM data set naming
    its SOP Class and Instance (e.g. a bare data set): a DICOM object, which ingest refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd element of junk
            dataset = dcmread(path, force=True, stop_before_pixels=True, specific_tags=_SOP_TAGS)
    except Exception:  # anything unparseable is not DICOM
        return False
    return "SOPClassUID" in dataset and "SOPInstanceUID" in dataset


def import_file(ingest: IngestService, path: Path) -> IngestOutcome | Skipped:
    """Ingest one file, or say why it is skipped: a DICOMDIR, or not DICOM at all (no
    ``DICM`` prefix, after the preamble or without one, and not parseable as a data set).
    Ingest applies the acceptance rule (``pacs.ingest.acceptance``) as for C-STORE."""
    with path.open("rb") as file:
        head = file.read(_HEAD_SIZE)
        if is_dicomdir(path, head):
            return Skipped.DICOMDIR
        prefixed = DICM_PREFIX in (head[128:132], head[:4])
        if not prefixed and not is_dicom_dataset(path):
            return Skipped.NOT_DICOM
        data = head + file.read()
    return ingest.store_part10(data, Source(channel="import", host="localhost"))


def run_import(settings: Settings, paths: list[Path], console: Console | None = None) -> int:
    """Import ``paths``; print a summary; return 1 if a DICOM object was rejected, else 0
    (files that are not DICOM are skipped and counted, not rejected; an object held in the
    quarantine is counted and listed, not rejected).

    Returns 2 without importing anything when a path does not exist (a typo should not
    leave half a folder imported).
    """
    console = console or Console(stderr=True)
    missing = [path for path in paths if not path.exists()]
    if missing:
        for path in missing:
            console.print(f"[red]error[/red] no such file or directory: {path}", highlight=False)
        return 2
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    ingest = build_ingest(settings)
    files = list(iter_files(paths))
    counts: Counter[str] = Counter()
    rejected: list[tuple[Path, str]] = []
    held: list[tuple[Path, str]] = []  # identity conflicts kept in the quarantine
    with Progress(console=console, transient=True) as progress, ThreadPoolExecutor(4) as pool:
        task = progress.add_task("importing", total=len(files))
        for path, outcome in zip(
            files, pool.map(lambda p: import_file(ingest, p), files), strict=False
        ):
            progress.advance(task)
            if isinstance(outcome, Skipped):
                counts[outcome] += 1
            elif outcome.status is StoreStatus.QUARANTINED:
                counts["quarantined"] += 1
                held.append((path, outcome.reason))
            elif outcome.status.ok:
                counts["duplicate" if outcome.status is StoreStatus.DUPLICATE else "stored"] += 1
            else:
                counts["rejected"] += 1
                rejected.append((path, f"{outcome.status}: {outcome.reason}"))
    table = Table(title=f"pacs import: {len(files)} files")
    table.add_column("result")
    table.add_column("files", justify="right")
    for name in ("stored", "duplicate", "rejected", "quarantined", *Skipped):
        if name != "quarantined" or counts[name]:
            table.add_row(name, str(counts[name]))
    console.print(table)
    for path, reason in rejected:
        console.print(f"[red]rejected[/red] {path}: {reason}", highlight=False)
    for path, reason in held:
        console.print(f"[yellow]quarantined[/yellow] {path}: {reason}", highlight=False)
    return 1 if rejected else 0
