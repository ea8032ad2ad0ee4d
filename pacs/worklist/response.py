"""The C-FIND response identifier of a worklist item: the requested keys, in the right
character set.

Character set (docs/conformance.md, ``pacs.query.charset``): values are held as Unicode; the
response keeps the request's SpecificCharacterSet when every value fits it, else it is in
ISO_IR 192 (UTF-8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.query.charset import response_character_set
from pacs.query.matching import values_of
from pacs.worklist.items import Code, WorklistItem
from pacs.worklist.matching import STEP_KEYS, TOP_KEYS, step_of

_SKIP = {"SpecificCharacterSet", "QueryRetrieveLevel"}
_STEP = "ScheduledProcedureStepSequence"


def code_sequence(codes: Iterable[Code | None]) -> Sequence:
    """Code Sequence items (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    items = []
    for entry in codes:
        if entry is None:
            continue
        value, scheme, meaning = entry
        code = Dataset()
        code.CodeValue = value[:16]
        code.CodingSchemeDesignator = scheme
        code.CodeMeaning = meaning[:64]
        items.append(code)
    return Sequence(items)


CODE_SEQUENCES: dict[str, Callable[[WorklistItem], Sequence]] = {
    "RequestedProcedureCodeSequence": lambda i: code_sequence([i.requested_procedure_code]),
    "ScheduledProtocolCodeSequence": lambda i: code_sequence(i.scheduled_protocol_codes),
}
"""The code sequences an identifier may ask for (at the top level or in the step)."""


def _value(keys: dict[str, Any], item: WorklistItem, keyword: str) -> Any:
    key = keys.get(keyword)
    if key is None:
        return None
    value = getattr(item, key.attribute)
    if key.kind == "list":
        return list(value) or None
    return value or None


def _fill(out: Dataset, requested: Dataset, keys: dict[str, Any], item: WorklistItem) -> None:
    for element in requested:
        keyword = element.keyword or keyword_for_tag(element.tag)
        if keyword in _SKIP or element.tag.group == 0x0000 or keyword == _STEP:
            continue
        if keyword in CODE_SEQUENCES:
            out.add(DataElement(element.tag, "SQ", CODE_SEQUENCES[keyword](item)))
            continue
        value = _value(keys, item, keyword)
        if value is None:
            vr = element.VR
            out.add(DataElement(element.tag, vr, Sequence() if vr == "SQ" else None))
        else:
            out.add(DataElement(element.tag, dictionary_VR(element.tag), value))


def _full_step() -> Dataset:
    """A step identifier naming every step key (a zero-item sequence asks for them all)."""
    step = Dataset()
    for keyword in STEP_KEYS:
        setattr(step, keyword, None)
    step.ScheduledProtocolCodeSequence = Sequence()
    return step


def response(identifier: Dataset, item: WorklistItem) -> Dataset:
    """The response identifier of ``item`` for the request ``identifier``."""
    out = Dataset()
    _fill(out, identifier, TOP_KEYS, item)
    if _STEP in identifier:
        requested_step = step_of(identifier)
        if len(requested_step) == 0:
            requested_step = _full_step()
        step = Dataset()
        _fill(step, requested_step, STEP_KEYS, item)
        out.ScheduledProcedureStepSequence = Sequence([step])
    texts = [
        text
        for dataset in (out, *out.get(_STEP, []))
        for element in dataset
        if element.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC")
        for text in values_of(element.value)
    ]
    charset = response_character_set(identifier.get("SpecificCharacterSet"), texts)
    if charset is not None:
        out.SpecificCharacterSet = charset
    return out
