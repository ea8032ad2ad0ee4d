"""PS3.4 C.2.2.2 / K.6.1.2 matching of a Modality Worklist identifier against one item.

Single value (case-sensitive, except PN: case-insensitive, also for Cyrillic), wildcards
``*`` and ``?``, date and time ranges (``A-B``, ``A-``, ``-B``; a single time matches as a
prefix), lists of UIDs; an empty key is universal. Keys of the Scheduled Procedure Step are
read from the first item of ScheduledProcedureStepSequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from pacs.errors import PacsError
from pacs.query import QueryError
from pacs.query.matching import compact, has_wildcard, range_bounds, values_of
from pacs.worklist.items import WorklistItem


class WorklistQueryError(PacsError, ValueError):
    """A Modality Worklist identifier that cannot be evaluated (e.g. a malformed date)."""


@dataclass(frozen=True)
class Key:
    """A matching key: the WorklistItem attribute that answers it and how it matches
    (``str``, ``pn``, ``date``, ``time``, ``uid``; ``list``: any of several values)."""

    attribute: str
    kind: str = "str"


TOP_KEYS: dict[str, Key] = {
    "PatientName": Key("patient_name", "pn"),
    "PatientID": Key("patient_id"),
    "IssuerOfPatientID": Key("issuer_of_patient_id"),
    "PatientBirthDate": Key("patient_birth_date", "date"),
    "PatientSex": Key("patient_sex"),
    "AccessionNumber": Key("accession_number"),
    "RequestedProcedureID": Key("requested_procedure_id"),
    "RequestedProcedureDescription": Key("requested_procedure_description"),
    "RequestedProcedurePriority": Key("requested_procedure_priority"),
    "StudyInstanceUID": Key("study_instance_uid", "uid"),
    "ReferringPhysicianName": Key("referring_physician_name", "pn"),
    "RequestingPhysician": Key("requesting_physician", "pn"),
    "AdmissionID": Key("admission_id"),
    "MedicalAlerts": Key("medical_alerts", "list"),
    "Allergies": Key("allergies", "list"),
    "RequestedProcedureComments": Key("requested_procedure_comments"),
}
"""Matching keys at the top level of the identifier."""

STEP_KEYS: dict[str, Key] = {
    "Modality": Key("modality"),
    "ScheduledStationAETitle": Key("scheduled_station_ae_titles", "list"),
    "ScheduledProcedureStepStartDate": Key("start_date", "date"),
    "ScheduledProcedureStepStartTime": Key("start_time", "time"),
    "ScheduledPerformingPhysicianName": Key("scheduled_performing_physician_name", "pn"),
    "ScheduledProcedureStepID": Key("scheduled_procedure_step_id"),
    "ScheduledProcedureStepDescription": Key("scheduled_procedure_step_description"),
    "ScheduledProcedureStepStatus": Key("scheduled_procedure_step_status"),
    "ScheduledStationName": Key("scheduled_station_names", "list"),
    "ScheduledProcedureStepLocation": Key("scheduled_procedure_step_location"),
    "RequestedContrastAgent": Key("requested_contrast_agent"),
    "PreMedication": Key("pre_medication"),
    "CommentsOnTheScheduledProcedureStep": Key("comments_on_the_scheduled_procedure_step"),
}
"""Matching keys inside ScheduledProcedureStepSequence."""


def step_of(identifier: Dataset) -> Dataset:
    """The requested Scheduled Procedure Step keys (the sequence's first item, or none)."""
    sequence = identifier.get("ScheduledProcedureStepSequence")
    return sequence[0] if sequence else Dataset()


def matches(identifier: Dataset, item: WorklistItem) -> bool:
    """Whether ``item`` matches every key of ``identifier``; raise
    :class:`WorklistQueryError` for a key that cannot be evaluated."""
    checks = [(identifier, TOP_KEYS), (step_of(identifier), STEP_KEYS)]
    try:
        for dataset, keys in checks:
            for element in dataset:
                key = keys.get(element.keyword)
                if key is None or element.VR == "SQ":
                    continue
                if not _matches(key, element.value, getattr(item, key.attribute)):
                    return False
    except QueryError as exc:  # the date/time matching shared with Query/Retrieve
        raise WorklistQueryError(str(exc)) from None
    return True


def _matches(key: Key, raw: Any, actual: Any) -> bool:
    values = values_of(raw)
    if not values or values == ["*"]:
        return True
    candidates = list(actual) if key.kind == "list" else [actual]
    return any(_single(key.kind, value, str(c)) for value in values for c in candidates)


def _single(kind: str, value: str, actual: str) -> bool:
    if kind in ("date", "time") and "-" in value:
        return _in_range(kind, value, actual)
    if kind in ("date", "time"):
        value = compact(value, kind)
    if kind == "pn":
        value, actual = value.lower(), actual.lower()
    if has_wildcard(value):
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
        return re.fullmatch(pattern, actual, flags=re.DOTALL) is not None
    if kind == "time":
        return bool(actual) and actual.startswith(value)
    return actual == value


def _in_range(kind: str, value: str, actual: str) -> bool:
    low, high = range_bounds(value, kind)
    if not actual:
        return False
    return (not low or actual >= low) and (not high or actual <= high + "~")
