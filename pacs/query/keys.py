"""Which attribute of the index answers which key, at which query level."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from pacs.index.models import Instance, Patient, Series, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
"""Query/Retrieve levels, from the top of the hierarchy down."""


class QueryModel(Enum):
    """The Query/Retrieve information model of a request."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


@dataclass(frozen=True)
class Key:
    """One matchable key: its column and how values match (``str``, ``pn``, ``date``,
    ``time``, ``uid``, ``int``; ``list`` for a backslash-joined multi-valued column)."""

    level: str
    column: InstrumentedAttribute[Any]
    kind: str


def _key(level: str, column: InstrumentedAttribute[Any], kind: str = "str") -> Key:
    return Key(level, column, kind)


KEYS: dict[str, Key] = {
    "PatientName": _key("PATIENT", Patient.patient_name, "pn"),
    "PatientID": _key("PATIENT", Patient.patient_id),
    "IssuerOfPatientID": _key("PATIENT", Patient.issuer_of_patient_id),
    "PatientBirthDate": _key("PATIENT", Patient.patient_birth_date, "date"),
    "PatientSex": _key("PATIENT", Patient.patient_sex),
    "StudyInstanceUID": _key("STUDY", Study.study_instance_uid, "uid"),
    "StudyDate": _key("STUDY", Study.study_date, "date"),
    "StudyTime": _key("STUDY", Study.study_time, "time"),
    "AccessionNumber": _key("STUDY", Study.accession_number),
    "StudyID": _key("STUDY", Study.study_id),
    "StudyDescription": _key("STUDY", Study.study_description),
    "ReferringPhysicianName": _key("STUDY", Study.referring_physician_name, "pn"),
    "InstitutionName": _key("STUDY", Study.institution_name),
    "ModalitiesInStudy": _key("STUDY", Study.modalities_in_study, "list"),
    "NumberOfStudyRelatedSeries": _key("STUDY", Study.number_of_study_related_series, "int"),
    "NumberOfStudyRelatedInstances": _key("STUDY", Study.number_of_study_related_instances, "int"),
    "SeriesInstanceUID": _key("SERIES", Series.series_instance_uid, "uid"),
    "Modality": _key("SERIES", Series.modality),
    "SeriesNumber": _key("SERIES", Series.series_number, "int"),
    "SeriesDescription": _key("SERIES", Series.series_description),
    "BodyPartExamined": _key("SERIES", Series.body_part_examined),
    "SeriesDate": _key("SERIES", Series.series_date, "date"),
    "SeriesTime": _key("SERIES", Series.series_time, "time"),
    "StationName": _key("SERIES", Series.station_name),
    "NumberOfSeriesRelatedInstances": _key(
        "SERIES", Series.number_of_series_related_instances, "int"
    ),
    "SOPInstanceUID": _key("IMAGE", Instance.sop_instance_uid, "uid"),
    "SOPClassUID": _key("IMAGE", Instance.sop_class_uid, "uid"),
    "InstanceNumber": _key("IMAGE", Instance.instance_number, "int"),
    "Rows": _key("IMAGE", Instance.rows, "int"),
    "Columns": _key("IMAGE", Instance.columns, "int"),
    "NumberOfFrames": _key("IMAGE", Instance.number_of_frames, "int"),
}
"""Keys held in the index, by DICOM keyword."""

COMPUTED: dict[str, str] = {
    "NumberOfPatientRelatedStudies": "PATIENT",
    "NumberOfPatientRelatedSeries": "PATIENT",
    "NumberOfPatientRelatedInstances": "PATIENT",
    "SOPClassesInStudy": "STUDY",
}
"""Return-only attributes computed per match (not usable as matching keys)."""

UNIQUE_KEYS: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
"""The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1)."""

ENTITIES: dict[str, Any] = {
    "PATIENT": Patient,
    "STUDY": Study,
    "SERIES": Series,
    "IMAGE": Instance,
}
"""The index table of each level."""
