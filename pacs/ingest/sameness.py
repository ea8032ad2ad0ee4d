"""Whether two Part-10 objects carry the same data set, whatever their encoding.

The file meta differs by path (over DIMSE the archive writes it; a file keeps its writer's),
and so may the encoding of the data set: DCMTK's ``storescu`` re-encodes a file before it
sends it (group lengths, sequence and item lengths, the negotiated transfer syntax), so one
object imported or sent by STOW-RS and then by C-STORE arrives as other bytes. Two objects are
the same when their data sets have the same elements with the same values: group length
elements (gggg,0000) and the file meta are not compared; a value read as UN on one side (an
implicit VR private element) is compared by its bytes.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


def same_data_set(stored: bytes, incoming: bytes) -> bool:
    """True when ``stored`` and ``incoming`` hold the same data set (see the module doc);
    both are decoded whole, so callers compare bytes first."""
    try:
        return _same(dcmread(BytesIO(stored)), dcmread(BytesIO(incoming)))
    except Exception:  # pydicom raises many types on data it cannot decode: not the same
        return False


def _tags(ds: Dataset) -> set[int]:
    return {int(tag) for tag in ds.keys() if tag.element != 0}  # noqa: SIM118 (no decoding)


def _same(a: Dataset, b: Dataset) -> bool:
    tags = _tags(a)
    if tags != _tags(b):
        return False
    return all(_same_element(a, b, tag) for tag in tags)


def _same_element(a: Dataset, b: Dataset, tag: int) -> bool:
    raw_a, raw_b = a.get_item(tag), b.get_item(tag)
    if "UN" in (_vr(raw_a), _vr(raw_b)) and _vr(raw_a) != _vr(raw_b):
        return _bytes(raw_a) == _bytes(raw_b)
    element_a, element_b = a[tag], b[tag]
    if isinstance(element_a.value, Sequence) or isinstance(element_b.value, Sequence):
        items_a, items_b = element_a.value, element_b.value
        return (
            isinstance(items_a, Sequence)
            and isinstance(items_b, Sequence)
            and len(items_a) == len(items_b)
            and all(_same(x, y) for x, y in zip(items_a, items_b, strict=True))
        )
    return bool(element_a.value == element_b.value)


def _vr(element: DataElement | RawDataElement | None) -> str:
    return str(getattr(element, "VR", "") or "")


def _bytes(element: DataElement | RawDataElement | None) -> bytes:
    value = getattr(element, "value", None)
    return value.rstrip(b"\0 ") if isinstance(value, bytes) else str(value).encode()
