"""DCMTK worklist files into worklist items: ``.wl`` data sets and ``dcmdump``-style text.

A DCMTK (``wlmscpfs``) or Orthanc worklist folder holds one item per file, either as a DICOM
data set (``.wl``, with or without File Meta Information) or as the text ``dump2dcm`` reads
(``(0010,0010) PN [Doe^John]``, sequences opened by ``SQ`` and ``(fffe,e000)`` item lines,
closed by ``(fffe,e00d)`` / ``(fffe,e0dd)``). ``item_from_dataset`` reads the attributes the
worklist answers (``pacs.worklist.matching`` keys and the code sequences) into a
``WorklistItem``, the reverse of ``pacs.worklist.response``.
"""

from __future__ import annotations

import dataclasses
import re
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacs.errors import PacsError
from pacs.query.matching import values_of
from pacs.worklist.items import Code, WorklistItem
from pacs.worklist.matching import STEP_KEYS, TOP_KEYS, Key


class WorklistFileError(PacsError, ValueError):
    """A file that is neither a DICOM data set nor dcmdump text (the line is named)."""


_LINE = re.compile(r"^\s*\(([0-9a-fA-F]{4}),([0-9a-fA-F]{4})\)\s+(\S+)\s*(.*)$")
_ITEM, _ITEM_END, _SEQUENCE_END = Tag(0xFFFE, 0xE000), Tag(0xFFFE, 0xE00D), Tag(0xFFFE, 0xE0DD)


def _dump_value(text: str) -> str:
    """The value of a dcmdump line: ``[...]`` (comment after ``#`` dropped), else the bare
    words before the comment; ``(no value available)`` is empty."""
    text = text.strip()
    if text.startswith("["):
        return text[1 : text.rfind("]")] if "]" in text else text[1:]
    text = text.split("#")[0].strip()
    return "" if text.startswith("(") else text


def parse_dump(text: str) -> Dataset:
    """The data set written as dcmdump text; raise :class:`WorklistFileError` on a bad line."""
    root = Dataset()
    stack: list[Any] = [root]  # Dataset (current item) or Sequence (awaiting items)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise WorklistFileError(f"line {number}: not a dcmdump element line")
        tag = Tag(int(match[1], 16), int(match[2], 16))
        vr, rest = match[3].upper(), match[4]
        if tag == _ITEM:
            if not isinstance(stack[-1], Sequence):
                raise WorklistFileError(f"line {number}: item outside a sequence")
            item = Dataset()
            stack[-1].append(item)
            stack.append(item)
        elif tag == _ITEM_END:
            if len(stack) < 2 or not isinstance(stack[-1], Dataset):
                raise WorklistFileError(f"line {number}: item end without an item")
            stack.pop()
        elif tag == _SEQUENCE_END:
            if len(stack) < 2 or not isinstance(stack[-1], Sequence):
                raise WorklistFileError(f"line {number}: sequence end without a sequence")
            stack.pop()
        else:
            while isinstance(stack[-1], Sequence) and len(stack) > 1 and vr != "SQ":
                stack.pop()  # a sequence without an explicit end
            if not isinstance(stack[-1], Dataset):
                raise WorklistFileError(f"line {number}: element inside a sequence, no item")
            if vr == "SQ":
                sequence = Sequence()
                stack[-1].add_new(tag, "SQ", sequence)
                stack.append(sequence)
            else:
                _add(stack[-1], tag, vr, _dump_value(rest))
    return root


def _add(dataset: Dataset, tag: Any, vr: str, value: str) -> None:
    if vr in ("US", "SS", "UL", "SL", "IS", "DS", "FL", "FD") and value:
        dataset.add_new(tag, vr, value.split("\\"))
    else:
        dataset.add_new(tag, vr, value or None)


def read_dataset(path: Path) -> Dataset:
    """A worklist file as a data set (DICOM with or without preamble, or dcmdump text)."""
    data = path.read_bytes()
    is_text = b"\x00" not in data[:4096]
    if is_text and data.lstrip()[:1] in (b"(", b"#"):
        return parse_dump(data.decode("utf-8", errors="replace"))
    try:
        return dcmread(BytesIO(data), force=True)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise WorklistFileError(f"not a DICOM data set: {exc}") from None


def _codes(sequence: Any) -> tuple[Code, ...]:
    return tuple(
        (
            str(i.get("CodeValue", "")),
            str(i.get("CodingSchemeDesignator", "")),
            str(i.get("CodeMeaning", "")),
        )
        for i in sequence or []
        if i.get("CodeValue")
    )


def _read(dataset: Dataset, keys: dict[str, Key], fields: dict[str, Any]) -> None:
    for element in dataset:
        keyword = element.keyword or keyword_for_tag(element.tag)
        key = keys.get(keyword)
        if key is None or element.VR == "SQ" or element.value in (None, ""):
            continue
        values = [str(v) for v in values_of(element.value)]
        fields[key.attribute] = tuple(values) if key.kind == "list" else "\\".join(values)


def item_from_dataset(dataset: Dataset) -> WorklistItem:
    """The worklist item a modality would receive for ``dataset`` (unset attributes empty)."""
    fields: dict[str, Any] = {
        f.name: f.default if f.default is not dataclasses.MISSING else ""
        for f in dataclasses.fields(WorklistItem)
    }
    fields["requested_procedure_code"] = None
    fields["scheduled_station_ae_titles"] = ()
    _read(dataset, TOP_KEYS, fields)
    codes = _codes(dataset.get("RequestedProcedureCodeSequence"))
    fields["requested_procedure_code"] = codes[0] if codes else None
    steps = dataset.get("ScheduledProcedureStepSequence") or [Dataset()]
    _read(steps[0], STEP_KEYS, fields)
    fields["scheduled_protocol_codes"] = _codes(steps[0].get("ScheduledProtocolCodeSequence"))
    fields["scheduled_procedure_step_status"] = "SCHEDULED"
    fields["patient_name"] = str(fields["patient_name"])
    return WorklistItem(**fields)
