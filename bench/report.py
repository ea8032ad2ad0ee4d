"""Each benchmark's own section of docs/performance.md, between its begin and end markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"

INTRO = (
    "# Performance\n\n"
    "Benchmarks of the archive on the development machine. Every section below is written "
    "by the script named in it; rerun the script to refresh it.\n\n"
)


def write_section(begin: str, end: str, text: str, doc: Path = DOC) -> None:
    """Replace the text between ``begin`` and ``end`` (``text`` carries both markers);
    append it the first time; create the file if needed."""
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(INTRO + text + "\n")
        return
    old = doc.read_text()
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        doc.write_text(head + text + rest.split(end, 1)[1])
    else:
        doc.write_text(old.rstrip("\n") + "\n\n" + text + "\n")
