"""Content negotiation of WADO-RS (PS3.18 8.7): Accept header -> what to send.

Each resource type has its acceptable media types; a request whose Accept header admits none
of them is answered 406. ``transfer-syntax`` parameters choose the encoding: ``*`` means as
stored; an uncompressed syntax (Explicit or Implicit VR Little Endian) is produced by
decoding when the stored one differs; any other syntax must be the stored one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from viewer_api.negotiation import DICOM as DICOM
from viewer_api.negotiation import DICOM_JSON as DICOM_JSON
from viewer_api.negotiation import OCTET_STREAM as OCTET_STREAM
from viewer_api.negotiation import (
    accepts,
    matches,
    media_ranges,
)

AS_STORED = "*"
NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

# PS3.18 table 8.7.4-1: media type of compressed frames per transfer syntax
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


class NotAcceptable(ValueError):
    """No representation the request accepts can be produced (HTTP 406)."""


def instance_syntax(accept: str) -> tuple[str, bool]:
    """For instances (``multipart/related; type="application/dicom"``): the transfer syntax
    to send (``*`` for as stored) and whether the client named it. Without a
    ``transfer-syntax`` parameter it is Explicit VR Little Endian (PS3.18 8.7.3.5.2); raise
    :class:`NotAcceptable`."""
    for r in media_ranges(accept):
        if matches(r.media_type, DICOM) and (r.multipart or r.media_type in ("*/*", "")):
            if not r.transfer_syntax:
                return str(ExplicitVRLittleEndian), False
            if r.transfer_syntax == AS_STORED or _is_uid(r.transfer_syntax):
                return r.transfer_syntax, True
    raise NotAcceptable('instances are sent as multipart/related; type="application/dicom"')


def check_syntax(target: str, stored: str, decodable: bool) -> None:
    """Raise :class:`NotAcceptable` unless an object stored in ``stored`` can be sent in
    ``target`` (as stored, or decoded to a native syntax)."""
    if target in (AS_STORED, stored):
        return
    if target not in NATIVE:
        raise NotAcceptable(f"transfer syntax {target} is not available (stored as {stored})")
    if UID(stored).is_compressed and not decodable:
        raise NotAcceptable(f"objects stored as {stored} cannot be decoded to {target}")


def metadata_type(accept: str) -> str:
    """``application/dicom+json`` if the Accept header admits it; raise NotAcceptable."""
    if accepts(accept, DICOM_JSON, "application/json"):
        return DICOM_JSON
    raise NotAcceptable("metadata is available as application/dicom+json")


@dataclass(frozen=True, slots=True)
class FrameChoice:
    """How to send frames: the part media type and the transfer syntax of their bytes."""

    media_type: str
    transfer_syntax: str


def frame_choice(accept: str, stored: str, decodable: bool) -> FrameChoice:
    """For ``frames``/``bulkdata`` of pixel data: as stored (octet-stream for native, the
    compressed media type or octet-stream with transfer-syntax for encapsulated), or decoded
    to Explicit VR Little Endian octet-stream. Raise :class:`NotAcceptable`."""
    compressed = UID(stored).is_compressed
    stored_type = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM) if compressed else OCTET_STREAM
    native = str(ExplicitVRLittleEndian)
    for r in media_ranges(accept):
        if r.media_type in ("", "*/*"):
            if r.transfer_syntax in ("", AS_STORED, stored):
                return FrameChoice(stored_type, stored)
            continue
        if r.media_type == OCTET_STREAM:
            syntax = r.transfer_syntax or native
            if syntax in (AS_STORED, stored):
                return FrameChoice(OCTET_STREAM, stored)
            if syntax in NATIVE and (not compressed or decodable):
                return FrameChoice(OCTET_STREAM, native if syntax == native else syntax)
            continue
        if (
            compressed
            and matches(r.media_type, stored_type)
            and r.media_type != "image/*"
            and r.transfer_syntax in ("", AS_STORED, stored)
        ):
            return FrameChoice(stored_type, stored)
    raise NotAcceptable(
        f"frames are available as {stored_type}"
        + (
            f" (transfer syntax {stored}) or decoded as application/octet-stream"
            if compressed
            else ""
        )
    )


def rendered_type(accept: str) -> str:
    """``image/png`` (default) or ``image/jpeg``; raise NotAcceptable."""
    for r in media_ranges(accept):
        if r.multipart:
            continue
        if matches(r.media_type, "image/png"):
            return "image/png"
        if matches(r.media_type, "image/jpeg"):
            return "image/jpeg"
    raise NotAcceptable("rendered images are available as image/png or image/jpeg")


def _is_uid(text: str) -> bool:
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(p.isdigit() and (p == "0" or p[0] != "0") for p in parts)
