"""Build one instance's metadata document (DICOM JSON, PS3.18 F.2) and its frame index.

The document holds every attribute of the data set except large binary values: Pixel Data
(always) and any OB/OD/OF/OL/OV/OW/UN value over ``BULK_DATA_THRESHOLD`` bytes become a
``BulkDataURI``. URIs are stored with ``BASE_PLACEHOLDER`` in place of the DICOMweb base URL,
which is known only when a request arrives; the reader substitutes it.

The frame index gives, for each frame, the byte ranges (offset, length) of its data in the
stored Part-10 object: one range per frame for native pixel data, the fragments of the frame
for encapsulated pixel data. Frames can then be served by ranged reads of the object.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from pacs.metadata.dicom_json import dumps, element

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the document layout; documents of an older version are rebuilt on read."""

BULK_DATA_THRESHOLD = 1024
"""Binary values longer than this (bytes) are replaced by a BulkDataURI."""

BASE_PLACEHOLDER = "@@DICOMWEB_BASE@@"
"""Stands for the DICOMweb base URL (``https://host/dicomweb``) inside stored documents."""

_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_AVAILABLE_TRANSFER_SYNTAX = 0x00083002
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD), little endian
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f")  # JPEG / JPEG-LS SOI, JPEG 2000 SOC


@dataclass(frozen=True, slots=True)
class FrameIndex:
    """Byte ranges of each frame in the stored object; ``encapsulated`` for compressed data."""

    encapsulated: bool
    frames: list[list[tuple[int, int]]]

    def to_bytes(self) -> bytes:
        """Compressed serialisation for the index."""
        body = {"encapsulated": self.encapsulated, "frames": self.frames}
        return zlib.compress(json.dumps(body, separators=(",", ":")).encode())

    @classmethod
    def from_bytes(cls, blob: bytes) -> FrameIndex:
        """Inverse of :meth:`to_bytes`."""
        body = json.loads(zlib.decompress(blob))
        frames = [[(int(o), int(n)) for o, n in frame] for frame in body["frames"]]
        return cls(bool(body["encapsulated"]), frames)


@dataclass(frozen=True, slots=True)
class MetadataDocument:
    """The DICOM JSON object of one instance (UTF-8, placeholders in) and its frame index."""

    json: bytes
    frames: FrameIndex | None

    def compressed(self) -> bytes:
        """The JSON as stored in the index."""
        return zlib.compress(self.json, 6)


def bulk_uri(study: str, series: str, instance: str, path: Iterable[int | str]) -> str:
    """The BulkDataURI (with the base placeholder) of the value at a tag path."""
    tail = "/".join(f"{p:08X}" if isinstance(p, int) else p for p in path)
    return f"{BASE_PLACEHOLDER}/studies/{study}/series/{series}/instances/{instance}/bulk/{tail}"


def build_document(
    data: bytes, study: str, series: str, instance: str, transfer_syntax: str
) -> MetadataDocument:
    """Parse the Part-10 object ``data`` and build its document; raises on unreadable data."""
    ds = dcmread(BytesIO(data), defer_size=BULK_DATA_THRESHOLD)
    walker = _Walker(study, series, instance, ds.original_encoding[1] is not False)
    body = walker.dataset(ds, [])
    body[f"{_AVAILABLE_TRANSFER_SYNTAX:08X}"] = element("UI", [transfer_syntax])
    encoded = dumps(dict(sorted(body.items())))
    frames = None
    try:
        frames = frame_index(ds, data)
    except Exception as exc:  # no index: frames are then served by decoding the object
        log.info("no frame index for an instance: %s", exc)
    return MetadataDocument(encoded, frames)


class _Walker:
    """Converts a data set to DICOM JSON, keeping large binary values out."""

    def __init__(self, study: str, series: str, instance: str, little_endian: bool) -> None:
        self.uids = (study, series, instance)
        self.little_endian = little_endian

    def dataset(self, ds: Dataset, path: list[int | str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag in list(ds.keys()):
            raw = ds.get_item(tag, keep_deferred=True)
            key = f"{int(tag):08X}"
            vr = _raw_vr(raw, ds)
            if vr in _BULK_VRS and (int(tag) in _PIXEL_TAGS or _length(raw) > BULK_DATA_THRESHOLD):
                uri = bulk_uri(*self.uids, [*path, int(tag)])
                out[key] = {"vr": vr, "BulkDataURI": uri}
                continue
            fast = _fast_json(raw, self.little_endian) if isinstance(raw, RawDataElement) else None
            if fast is not None:
                out[key] = fast
                continue
            try:
                elem = ds[tag]
            except Exception:  # a value pydicom cannot convert: kept out, named by its VR
                out[key] = element(vr or "UN", [])
                continue
            if elem.VR == "SQ":
                items = [
                    self.dataset(item, [*path, int(tag), str(index)])
                    for index, item in enumerate(elem.value)
                ]
                out[key] = element("SQ", items)
                continue
            try:
                out[key] = _element_json(elem, ds)
            except Exception:
                out[key] = element(elem.VR if " or " not in elem.VR else "UN", [])
        return out


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _fast_json(raw: RawDataElement, little_endian: bool) -> dict[str, Any] | None:
    """DICOM JSON of the commonest raw elements straight from their bytes (ASCII text, IS,
    binary numbers), as pydicom would write it but several times faster, except that text
    values are trimmed and empty values of a multi-valued element are null (PS3.18 F.2.5);
    None for the rest (other or ambiguous VRs, non-ASCII text, big endian), which go
    through pydicom."""
    value = raw.value
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, unless ambiguous (e.g. US or SS)
        try:
            vr = dictionary_VR(BaseTag(int(raw.tag)))
        except KeyError:
            return None
    if not isinstance(value, bytes) or " or " in vr:
        return None
    if vr in _NUMBER_FORMATS:
        if not little_endian:
            return None
        code = _NUMBER_FORMATS[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        numbers = list(struct.unpack(f"<{len(value) // size}{code}", value))
        if code in "fd" and not all(math.isfinite(n) for n in numbers):
            return None
        return element(vr, numbers)
    if (vr not in _TEXT_VRS and vr != "IS") or not value.isascii():
        return None
    parts = [p.strip(" \0") for p in value.decode("ascii").split("\\")]
    if not any(parts):
        return element(vr, [])
    if vr == "IS":
        if not all(p.lstrip("+-").isdigit() for p in parts):
            return None
        return element(vr, [int(p) for p in parts])
    return element(vr, [p if p else None for p in parts])


def _raw_vr(raw: DataElement | RawDataElement, ds: Dataset) -> str:
    vr = raw.VR
    if vr and " or " not in vr:
        return str(vr)
    tag = BaseTag(int(raw.tag))
    if int(tag) in _PIXEL_TAGS:
        if int(tag) == PIXEL_DATA:
            return "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        return "OF" if int(tag) == 0x7FE00008 else "OD"
    try:
        guessed = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return str(guessed).split(" or ")[0]


def _length(raw: DataElement | RawDataElement) -> int:
    if isinstance(raw, RawDataElement):
        return int(raw.length) if raw.value is None else len(raw.value or b"")
    value = raw.value
    return len(value) if isinstance(value, bytes | bytearray) else 0


def _element_json(elem: DataElement, ds: Dataset) -> dict[str, Any]:
    if " or " in elem.VR:
        elem = cast(DataElement, correct_ambiguous_vr_element(elem, ds, True))
    if " or " in elem.VR:
        elem.VR = elem.VR.split(" or ")[0]
    result: dict[str, Any] = elem.to_json_dict(None, 2**62)
    return result


def frame_index(ds: Dataset, data: bytes) -> FrameIndex | None:
    """Byte ranges of the frames of ``ds`` in ``data`` (None when there is no pixel data, or
    when the frames cannot be located without decoding: deflated data sets, 1-bit images,
    fragments that cannot be assigned to frames)."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if raw is None or syntax is None or syntax.is_deflated:
        return None
    offset = raw.value_tell if isinstance(raw, RawDataElement) else None
    if offset is None:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if syntax.is_compressed:
        return _encapsulated_index(data, offset, frames)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    if bits % 8:
        return None
    size = rows * columns * samples * bits // 8
    if size * frames > int(raw.length):
        raise ValueError("pixel data shorter than its frames")
    return FrameIndex(False, [[(offset + k * size, size)] for k in range(frames)])


def _encapsulated_index(data: bytes, pos: int, frames: int) -> FrameIndex | None:
    """Group the fragments of encapsulated pixel data at ``pos`` (PS3.5 A.4), located by
    ``pydicom.encaps``, into frames; raise ValueError when the items are malformed."""
    buffer = BytesIO(data)
    buffer.seek(pos)
    table = parse_basic_offsets(buffer)
    first = buffer.tell()
    fragments: list[tuple[int, int, int]] = []  # item start relative to first, offset, length
    for start in parse_fragments(buffer)[1]:
        (length,) = struct.unpack_from("<I", data, start + 4)
        if start + 8 + length > len(data):
            raise ValueError("malformed fragment item")
        fragments.append((start - first, start + 8, length))
    if not fragments:
        raise ValueError("no fragments")
    end = fragments[-1][1] + fragments[-1][2]
    if data[end : end + 4] != _SEQUENCE_DELIMITER:
        raise ValueError("the fragments do not end with a sequence delimiter")
    ranges = [(offset, length) for _, offset, length in fragments]
    if frames == 1:
        return FrameIndex(True, [ranges])
    if len(table) == frames:
        starts = {start: k for k, start in enumerate(table)}
        grouped: list[list[tuple[int, int]]] = []
        for start, offset, length in fragments:
            if start in starts or not grouped:
                grouped.append([])
            grouped[-1].append((offset, length))
        if len(grouped) == frames:
            return FrameIndex(True, grouped)
    if len(fragments) == frames:
        return FrameIndex(True, [[r] for r in ranges])
    grouped = []
    for _, offset, length in fragments:
        if data[offset : offset + 2] in _FRAME_STARTS or not grouped:
            grouped.append([])
        grouped[-1].append((offset, length))
    return FrameIndex(True, grouped) if len(grouped) == frames else None


def tag_path(text: str) -> list[int | str]:
    """Parse a bulk data path (``7FE00010`` or ``00540016/0/00181072``); raise ValueError."""
    parts = text.strip("/").split("/")
    if len(parts) % 2 == 0:
        raise ValueError("a bulk data path alternates tags and item indexes, ending in a tag")
    path: list[int | str] = []
    for number, part in enumerate(parts):
        if number % 2 == 0:
            if len(part) != 8:
                raise ValueError(f"not a tag: {part[:16]!r}")
            path.append(int(Tag(int(part, 16))))
        elif part.isdigit():
            path.append(str(int(part)))
        else:
            raise ValueError(f"not an item index: {part[:16]!r}")
    return path


def value_at(ds: Dataset, path: list[int | str]) -> DataElement:
    """The element a parsed bulk data path names in ``ds``; raise KeyError when absent."""
    current: Dataset = ds
    for number in range(0, len(path) - 1, 2):
        seq = current[int(path[number])].value
        if not isinstance(seq, Sequence):
            raise KeyError("not a sequence")
        index = int(path[number + 1])
        if index >= len(seq):
            raise KeyError("no such item")
        current = seq[index]
    return current[int(path[-1])]
