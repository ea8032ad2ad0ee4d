"""Build a Part-10 file from a received C-STORE data set without re-encoding it.

pynetdicom's ``Event.encoded_dataset()`` builds the file meta through pydicom datasets,
which costs about half a millisecond per object; the File Meta Information group
(PS3.10 7.1) is small and fixed, so it is encoded here directly in explicit VR little endian.
"""

from __future__ import annotations

import struct

from pacs import __version__

PREAMBLE = b"\x00" * 128 + b"DICM"
IMPLEMENTATION_CLASS_UID = "2.25.60170585607514588047288330990416703603"
"""The archive's own Implementation Class UID: a UUID-derived UID (PS3.5 B.2), no org root."""
IMPLEMENTATION_VERSION_NAME = f"PACS_{__version__.replace('.', '')}"[:16]


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (short-length VRs only)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """The encoded File Meta Information group, including its group length."""
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
            _element(0x0016, b"AE", _padded(source_ae_title.strip() or "UNKNOWN", b" ")),
        )
    )
    return _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10(
    dataset: bytes,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str,
) -> bytes:
    """Preamble + 'DICM' + file meta + the data set bytes exactly as received."""
    meta = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title)
    return b"".join((PREAMBLE, meta, dataset))
