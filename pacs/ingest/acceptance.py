"""The acceptance rule: which objects the archive stores, one rule for every entry point.

C-STORE (the lean acceptor and pynetdicom's), STOW-RS and ``pacs import`` all end in
``IngestService.store_part10``, which applies this rule; the DICOM AE proposes and accepts
presentation contexts for exactly :data:`STORAGE_SOP_CLASSES`. docs/conformance.md (3.5,
"Acceptance rule") states the same rule for users.

- SOP Class: the data set's SOPClassUID must be a storage SOP class of the archive
  (:data:`STORAGE_SOP_CLASSES`: every storage SOP class of the standard, retired ones
  included, except those of objects without a patient, which the index cannot file).
  An object without one (``InvalidDicomError``) or with another
  (``SOPClassNotSupportedError``) is refused.
- Encoding: a Part-10 object, with or without its 128-byte preamble and ``DICM`` prefix
  (both are supplied, :func:`as_part10`); a bare data set without File Meta Information
  is refused (its transfer syntax is unknown).
- Pixel Data: optional. An image without it (anonymised, stripped, or with its pixels in
  private elements) is stored. Native (uncompressed) Pixel Data shorter than Rows x Columns
  x SamplesPerPixel x BitsAllocated x frames says (1-bit pixels packed, YBR_FULL_422
  subsampled) is refused: its frames could not be served. Longer (trailing padding) is
  accepted, as pydicom and DCMTK read it.
- File Meta Information naming another SOP Instance or SOP Class than the data set: stored,
  under the data set's UIDs, with a warning (:class:`AcceptanceWarning`).
"""

from __future__ import annotations

from enum import StrEnum

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts

from pacs.errors import InvalidDicomError, SOPClassNotSupportedError

DICM = b"DICM"
PREAMBLE = b"\x00" * 128

_NOT_STORAGE = (
    "Storage Commitment",  # a DIMSE-N service, not an object
    "Media Storage Directory",  # DICOMDIR: an index of files, not an object of a patient
)
_NON_PATIENT = (
    # objects without a patient or study (PS3.3 non-patient IODs): nothing to file them under
    "Hanging Protocol",
    "Color Palette",
    "Implant Template",  # Generic Implant Template, Implant Template Group
    "Implant Assembly Template",
    "Protocol Approval",
    "Defined Procedure Protocol",
    "Inventory",
)


def _storage_sop_classes() -> frozenset[str]:
    """pynetdicom's storage SOP classes and every "... Storage" SOP class of pydicom's UID
    dictionary (retired ones included), less the non-object and non-patient ones."""
    named = {
        uid
        for uid, (name, kind, _info, _retired, _keyword) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name
    }
    named |= {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    return frozenset(
        uid
        for uid in named
        if not any(part in _sop_class_name(uid) for part in _NOT_STORAGE + _NON_PATIENT)
    )


def _sop_class_name(uid: str) -> str:
    entry = UID_dictionary.get(uid)
    return entry[0] if entry else ""


STORAGE_SOP_CLASSES = _storage_sop_classes()
"""SOP classes the archive stores (and the Storage SCP's abstract syntaxes)."""


class AcceptanceWarning(StrEnum):
    """Why a stored object was stored with a warning (C-STORE 0xB000/0xB007, STOW-RS
    WarningReason): the File Meta Information disagrees with the data set."""

    SOP_INSTANCE_UID_DIFFERS = "stored under the data set's SOPInstanceUID, not the file meta's"
    SOP_CLASS_UID_DIFFERS = "stored under the data set's SOPClassUID, not the file meta's"


def as_part10(data: bytes) -> bytes:
    """``data`` with a zero preamble in front when it starts with the ``DICM`` prefix
    itself (a Part-10 file written without its preamble), and with the prefix too when it
    starts with the File Meta Information group (pydicom writes a data set without a
    ``preamble`` so, as dicomweb-client sends it); otherwise ``data`` unchanged."""
    if data[128:132] == DICM:
        return data
    if data[:4] == DICM:
        return PREAMBLE + data
    if data[:2] == b"\x02\x00" and data[4:6].isalpha():  # a group 0002 element, explicit VR
        return PREAMBLE + DICM + data
    return data


def check_sop_class(ds: Dataset) -> str:
    """The data set's SOPClassUID; raise ``InvalidDicomError`` when it has none and
    ``SOPClassNotSupportedError`` unless it is a storage SOP class of the archive."""
    uid = str(ds.get("SOPClassUID", "") or "").strip()
    if not uid:
        raise InvalidDicomError("the data set has no SOPClassUID")
    if uid not in STORAGE_SOP_CLASSES:
        name = _sop_class_name(uid)
        what = f"{uid[:64]} ({name})" if name else f"{uid[:64]} (unknown)"
        raise SOPClassNotSupportedError(f"not a storage SOP class: {what}")
    return uid


def meta_warnings(ds: Dataset) -> tuple[AcceptanceWarning, ...]:
    """The warnings of a File Meta Information that names another instance or class."""
    meta = ds.file_meta
    warnings = []
    meta_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    if meta_instance and meta_instance != str(ds.get("SOPInstanceUID", "")):
        warnings.append(AcceptanceWarning.SOP_INSTANCE_UID_DIFFERS)
    meta_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if meta_class and meta_class != str(ds.get("SOPClassUID", "")):
        warnings.append(AcceptanceWarning.SOP_CLASS_UID_DIFFERS)
    return tuple(warnings)


def _positive(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """A positive integer attribute (``default`` when absent); None when absent without a
    default, or malformed."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def expected_pixel_bytes(ds: Dataset) -> int | None:
    """The length of native Pixel Data that the Image Pixel module of ``ds`` describes,
    without the pad byte of an odd length (PS3.5 8.1.1, 8.2; PS3.3 C.7.6.3.1.2); None when
    its attributes are missing or malformed."""
    values = [
        _positive(ds, "Rows"),
        _positive(ds, "Columns"),
        _positive(ds, "SamplesPerPixel", 1),
        _positive(ds, "NumberOfFrames", 1),
        _positive(ds, "BitsAllocated"),
    ]
    if any(value is None for value in values):
        return None
    rows, columns, samples, frames, bits = (int(value or 0) for value in values)
    count = rows * columns * samples * frames
    if bits == 1:
        length = (count + 7) // 8
    elif bits % 8:
        return None
    else:
        length = count * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        length = length // 3 * 2
    return length


def check_pixel_data(ds: Dataset, pixel_data_length: int | None) -> None:
    """Raise ``InvalidDicomError`` when native Pixel Data of ``pixel_data_length`` bytes is
    shorter than the Image Pixel module of ``ds`` says; None: no (native) Pixel Data.

    Longer Pixel Data is accepted: readers (pydicom, DCMTK) ignore trailing padding, and
    real objects carry it. Image Pixel attributes that are missing or malformed are not
    checked here (the object is stored; WADO-RS cannot decode its pixels)."""
    if pixel_data_length is None:
        return
    expected = expected_pixel_bytes(ds)
    if expected is not None and pixel_data_length < expected:
        raise InvalidDicomError(
            f"Pixel Data is {pixel_data_length} bytes; Rows, Columns, SamplesPerPixel,"
            f" BitsAllocated and frames make {expected}"
        )
