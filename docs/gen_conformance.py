"""Regenerate the tables of docs/conformance.md from the archive's own AE configuration.

The tables sit between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` markers;
everything else in the document is written by hand. Run after changing ``pacs/dimse/ae.py`` or
upgrading pydicom/pynetdicom::

    .venv/bin/python docs/gen_conformance.py          # rewrite docs/conformance.md
    .venv/bin/python docs/gen_conformance.py --check  # exit 1 if it is out of date (the tests)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pynetdicom
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.config import Settings
from pacs.dimse.ae import build_ae
from pacs.dimse.policy import AEPolicy

DOC = Path(__file__).resolve().with_name("conformance.md")


def _uid_order(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def _archive_ae() -> AE:
    """The AE exactly as a DICOM server process builds it (defaults, accept any AE)."""
    return build_ae(Settings(), AEPolicy([], accept_any=True))


def _accepted_transfer_syntaxes(ae: AE) -> list[str]:
    """Accepted transfer syntaxes in the AE's order, which is its order of preference."""
    syntaxes: dict[str, None] = {}
    for cx in ae.supported_contexts:
        syntaxes.update(dict.fromkeys(str(ts) for ts in cx.transfer_syntax))
    return list(syntaxes)


def implementation(ae: AE) -> str:
    """Implementation identification of the archive's AE."""
    return "\n".join(
        [
            "| item | value |",
            "|---|---|",
            f"| Implementation Class UID | `{ae.implementation_class_uid}` |",
            f"| Implementation Version Name | `{ae.implementation_version_name}` |",
            f"| DICOM toolkit | pynetdicom {pynetdicom.__version__}, "
            f"pydicom {pydicom.__version__} |",
        ]
    )


def _role(uid: str) -> str:
    if uid == Verification:
        return "SCP (Verification)"
    name = UID(uid).name
    if "Query/Retrieve" in name:  # "... Information Model - FIND" (MOVE, GET)
        return f"SCP (Query/Retrieve {name.rsplit(' - ', 1)[-1]})"
    if "Worklist" in name:
        return "SCP (Modality Worklist)"
    if "Performed Procedure Step" in name:
        return "SCP (MPPS)"
    if "Storage Commitment" in name:
        return "SCP (Storage Commitment)"
    return "SCP (Storage)"


def sop_classes(ae: AE) -> str:
    """Every SOP class the archive accepts as SCP, with its role."""
    rows = ["| SOP Class | SOP Class UID | Role |", "|---|---|---|"]
    uids = sorted({str(cx.abstract_syntax) for cx in ae.supported_contexts}, key=_uid_order)
    for uid in uids:
        rows.append(f"| {UID(uid).name} | `{uid}` | {_role(uid)} |")
    rows.append("")
    storage = sum(_role(uid) == "SCP (Storage)" for uid in uids)
    worklist = sum(_role(uid) == "SCP (Modality Worklist)" for uid in uids)
    normalized = sum(_role(uid) in ("SCP (MPPS)", "SCP (Storage Commitment)") for uid in uids)
    others = len(uids) - storage - worklist - normalized - 1
    rows.append(
        f"{storage} Storage SOP Classes, {others} Query/Retrieve SOP Classes,"
        f" {worklist} Modality Worklist SOP Class, the Modality Performed Procedure Step and"
        " Storage Commitment Push Model SOP Classes and the Verification SOP Class."
    )
    return "\n".join(rows)


def transfer_syntaxes(ae: AE) -> str:
    """Transfer syntaxes accepted on every presentation context, in order of preference."""
    rows = ["| # | Transfer Syntax | UID |", "|---|---|---|"]
    for rank, uid in enumerate(_accepted_transfer_syntaxes(ae), start=1):
        rows.append(f"| {rank} | {UID(uid).name} | `{uid}` |")
    return "\n".join(rows)


def refused_transfer_syntaxes(ae: AE) -> str:
    """Transfer syntaxes pydicom's dictionary knows that the archive does not accept."""
    accepted = set(_accepted_transfer_syntaxes(ae))
    refused = sorted(
        (
            uid
            for uid, entry in UID_dictionary.items()
            if entry[1] == "Transfer Syntax" and uid not in accepted
        ),
        key=_uid_order,
    )
    rows = ["| Transfer Syntax | UID | note |", "|---|---|---|"]
    for uid in refused:
        note = "retired" if UID_dictionary[uid][3] == "Retired" else ""
        rows.append(f"| {UID(uid).name} | `{uid}` | {note} |")
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[AE], str]] = {
    "implementation": implementation,
    "sop-classes": sop_classes,
    "transfer-syntaxes": transfer_syntaxes,
    "refused-transfer-syntaxes": refused_transfer_syntaxes,
}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current content."""
    ae = _archive_ae()
    for name, build in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: markers for section {name!r} are missing")
        body = build(ae)
        text = pattern.sub(lambda m, body=body: f"{m.group(1)}{body}\n{m.group(2)}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite the document, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is out of date: run python docs/gen_conformance.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
