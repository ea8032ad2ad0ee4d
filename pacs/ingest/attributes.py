"""Parse a Part-10 object once and pull out what the index stores.

Values are truncated to their column widths so that a malformed but readable object is still
indexed the same way on SQLite and PostgreSQL; the stored bytes are never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalid
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pacs.errors import InvalidDicomError
from pacs.ingest.acceptance import check_pixel_data, check_sop_class
from pacs.ingest.structure import check_complete, dataset_offset
from pacs.storage.keys import require_uid


@dataclass(frozen=True, slots=True)
class InstanceAttributes:
    """The index attributes of one instance, at every level of the hierarchy."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    institution_name: str
    specific_character_set: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    series_date: str
    series_time: str
    station_name: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    # routing attributes (study lifecycle), kept only in series_routing
    image_type: str = ""
    slice_thickness: float | None = None
    image_orientation_patient: str = ""
    manufacturer: str = ""  # the creator marker of the derived-object rule (pacs.ingest.derived)


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is None or math.isfinite(number) else None


def _text(ds: Dataset, keyword: str, width: int) -> str:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:width]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def parse_part10(data: bytes) -> Dataset:
    """Read the header of a Part-10 object (pixel data is skipped, not decoded); raise
    ``InvalidDicomError`` unless it is whole and its native Pixel Data (if any) is as long
    as its Image Pixel module says (``pacs.ingest.acceptance``)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part-10 object (no 'DICM' prefix after the preamble)")
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    except (PydicomInvalid, EOFError) as exc:
        raise InvalidDicomError(f"cannot parse DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt data
        raise InvalidDicomError(f"cannot parse DICOM object: {type(exc).__name__}: {exc}") from exc
    # pydicom accepts a truncated object silently: check that every element is whole
    implicit, little_endian = ds.original_encoding
    pixel_data_length = check_complete(
        memoryview(data)[dataset_offset(data) :],
        implicit=bool(implicit),
        little_endian=little_endian is not False,
        deflated=_is_deflated(ds.file_meta.get("TransferSyntaxUID")),
    )
    check_pixel_data(ds, pixel_data_length)
    return ds


def _is_deflated(transfer_syntax: UID | None) -> bool:
    try:
        return bool(transfer_syntax and transfer_syntax.is_deflated)
    except ValueError:  # a private transfer syntax pydicom does not know
        return False


def extract(ds: Dataset) -> InstanceAttributes:
    """Validate the UIDs of ``ds`` and return its index attributes (the data set's own
    UIDs, whatever its File Meta Information says).

    Raises ``SOPClassNotSupportedError`` for a data set of no storage SOP class and
    ``InvalidDicomError`` naming the first bad attribute; element values that pydicom
    cannot decode are reported the same way.
    """
    try:
        meta = ds.file_meta
        attributes = InstanceAttributes(
            patient_id=_text(ds, "PatientID", 64),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_sex=_text(ds, "PatientSex", 16),
            study_instance_uid=require_uid("StudyInstanceUID", ds.get("StudyInstanceUID")),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_id=_text(ds, "StudyID", 16),
            study_description=_text(ds, "StudyDescription", 64),
            referring_physician_name=_text(ds, "ReferringPhysicianName", 324),
            institution_name=_text(ds, "InstitutionName", 64),
            specific_character_set=_text(ds, "SpecificCharacterSet", 128),
            series_instance_uid=require_uid("SeriesInstanceUID", ds.get("SeriesInstanceUID")),
            modality=_text(ds, "Modality", 16),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription", 64),
            body_part_examined=_text(ds, "BodyPartExamined", 16),
            series_date=_text(ds, "SeriesDate", 8),
            series_time=_text(ds, "SeriesTime", 16),
            station_name=_text(ds, "StationName", 16),
            sop_instance_uid=require_uid("SOPInstanceUID", ds.get("SOPInstanceUID")),
            sop_class_uid=require_uid("SOPClassUID", ds.get("SOPClassUID")),
            instance_number=_int(ds, "InstanceNumber"),
            transfer_syntax_uid=require_uid("TransferSyntaxUID", meta.get("TransferSyntaxUID")),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            image_type=_text(ds, "ImageType", 128),
            slice_thickness=_float(ds, "SliceThickness"),
            image_orientation_patient=_text(ds, "ImageOrientationPatient", 128),
            manufacturer=_text(ds, "Manufacturer", 64),
        )
    except InvalidDicomError:
        raise
    except Exception as exc:  # a value pydicom cannot decode
        raise InvalidDicomError(f"cannot read attributes: {type(exc).__name__}: {exc}") from exc
    check_sop_class(ds)
    return attributes
