"""Structural completeness of an encoded data set: every element whole, every sequence closed.

pydicom reads a truncated object without complaint (a short last value, a missing sequence
delimiter, a cut-off element header are all silently accepted), and the header-only parse of
ingest never looks at the pixel data at all. A sender that lost part of a file would then be
told its object was archived. This walks the element and item headers (values are skipped,
never decoded) and raises ``InvalidDicomError`` unless the data set ends exactly where its
last element ends.
"""

from __future__ import annotations

import struct
import zlib

from pacs.errors import InvalidDicomError

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# Explicit VRs with a reserved 2 bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_MAX_DEPTH = 64
_PIXEL_DATA = 0x7FE00010


class _Walker:
    """Walks the headers of one encoded data set."""

    def __init__(self, data: bytes | memoryview, little_endian: bool) -> None:
        self.data = data
        self.end = len(data)
        self.u16 = struct.Struct("<H" if little_endian else ">H").unpack_from
        self.u32 = struct.Struct("<I" if little_endian else ">I").unpack_from
        self.pixel_data_length: int | None = None  # of a top-level native Pixel Data

    def _need(self, pos: int, size: int, what: str) -> None:
        if pos + size > self.end:
            raise InvalidDicomError(f"truncated data set: {what} at byte {pos} is incomplete")

    def _tag(self, pos: int) -> int:
        self._need(pos, 8, "element header")
        return int(self.u16(self.data, pos)[0]) << 16 | int(self.u16(self.data, pos + 2)[0])

    def element_end(self, pos: int) -> int:
        """End of one explicit-VR element of defined length (the file meta information)."""
        self._tag(pos)
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            self._need(pos, 12, "meta element header")
            pos, length = pos + 12, int(self.u32(self.data, pos + 8)[0])
        else:
            pos, length = pos + 8, int(self.u16(self.data, pos + 6)[0])
        self._need(pos, length, "meta element value")
        return pos + length

    def elements(self, pos: int, implicit: bool, in_item: bool, depth: int) -> int:
        """Walk elements from ``pos``; return the position after them (and an item delimiter)."""
        if depth > _MAX_DEPTH:
            raise InvalidDicomError("data set nests sequences too deeply")
        while pos < self.end:
            tag = self._tag(pos)
            if tag == _ITEM_END and in_item:
                return pos + 8
            vr = b""
            if implicit or tag >> 16 == 0xFFFE:
                length, pos = int(self.u32(self.data, pos + 4)[0]), pos + 8
            else:
                vr = bytes(self.data[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    self._need(pos, 12, "element header")
                    length, pos = int(self.u32(self.data, pos + 8)[0]), pos + 12
                else:
                    length, pos = int(self.u16(self.data, pos + 6)[0]), pos + 8
            if depth == 0 and tag == _PIXEL_DATA and length != _UNDEFINED:
                self.pixel_data_length = length
            if length == _UNDEFINED:
                # CP-246: an undefined-length UN is a sequence encoded in implicit VR
                pos = self.items(pos, implicit or vr == b"UN", depth + 1)
            else:
                self._need(pos, length, f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X})")
                pos += length
        if in_item:
            raise InvalidDicomError("truncated data set: an item has no delimiter")
        return pos

    def items(self, pos: int, implicit: bool, depth: int) -> int:
        """Walk the items of an undefined-length value; return the position after its end."""
        while True:
            self._need(pos, 8, "item header")
            tag = self._tag(pos)
            length = int(self.u32(self.data, pos + 4)[0])
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise InvalidDicomError(
                    f"malformed data set: ({tag >> 16:04X},{tag & 0xFFFF:04X}) inside a sequence"
                )
            if length == _UNDEFINED:
                pos = self.elements(pos, implicit, in_item=True, depth=depth + 1)
            else:
                self._need(pos, length, "item")
                pos += length


def check_complete(
    dataset: bytes | memoryview, implicit: bool, little_endian: bool, deflated: bool = False
) -> int | None:
    """Raise ``InvalidDicomError`` unless ``dataset`` (encoded, no meta) is structurally whole.

    Returns the value length of its top-level native Pixel Data (7FE0,0010); None when it
    has none, or encapsulated (compressed) Pixel Data.
    """
    if deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            dataset = inflater.decompress(dataset)
        except zlib.error as exc:
            raise InvalidDicomError(f"corrupt deflated data set: {exc}") from exc
        if not inflater.eof:
            raise InvalidDicomError("truncated data set: the deflate stream does not end")
    if not implicit and len(dataset) >= 6 and not _looks_like_vr(bytes(dataset[4:6])):
        implicit = True  # implicit VR despite the transfer syntax: pydicom reads it so too
    walker = _Walker(dataset, little_endian)
    walker.elements(0, implicit, in_item=False, depth=0)
    return walker.pixel_data_length


def _looks_like_vr(value: bytes) -> bool:
    return len(value) == 2 and all(0x41 <= c <= 0x5A for c in value)


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the data set of a Part-10 object starts: after preamble, prefix and meta group."""
    walker = _Walker(data, little_endian=True)
    pos = 132
    while pos + 8 <= len(data) and walker.u16(data, pos)[0] == 0x0002:
        pos = walker.element_end(pos)
    return pos
