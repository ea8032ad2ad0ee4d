"""ORM^O01 (HL7 v2.3.1) and OMI^O23 (v2.5.1) orders as worklist items (IHE RAD-4 / RAD-13).

Mapping (docs/conformance.md, HL7 orders): PID-3 (first repetition; CX-4 the issuer) PatientID,
PID-5 PatientName, PID-7 PatientBirthDate, PID-8 PatientSex; PV1-8 ReferringPhysicianName
(else ORC-12 / OBR-16), PV1-19 AdmissionID; ORC-1 the order control (NW, XO, SC: active;
CA, DC, OC, CR: revoked); accession number IPC-1 or OBR-18, RequestedProcedureID IPC-2 or
OBR-19, StudyInstanceUID IPC-3 or ZDS-1, ScheduledProcedureStepID IPC-4 or OBR-20, Modality
IPC-5 or OBR-24, ScheduledProtocolCodeSequence IPC-6 (else OBR-4 components 4-6),
ScheduledStationName IPC-7, ScheduledProcedureStepLocation IPC-8, ScheduledStationAETitle
IPC-9; requested procedure code and description OBR-44 (else OBR-4), step description
OBR-4.5 (else the procedure's); start TQ1-7 / ORC-7.4 / OBR-27.4; priority TQ1-9 / ORC-7.6 /
OBR-27.6; MedicalAlerts OBR-13; Allergies AL1-3; RequestedProcedureComments the NTE-3 texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pacs.hl7.messages import (
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_MESSAGE_TYPE,
    HL7Error,
    field,
    has_segment,
    message_type,
)
from pacs.worklist.items import MODALITIES, Code, WorklistItem

ORDER_TYPES = frozenset({"ORM^O01", "OMI^O23"})
"""The message types taken as orders."""
ACTIVE_CONTROLS = frozenset({"NW", "XO", "SC", ""})
CANCEL_CONTROLS = frozenset({"CA", "DC", "OC", "CR", "OD"})
PRIORITIES = {"S": "STAT", "A": "HIGH", "P": "HIGH", "R": "ROUTINE", "C": "MEDIUM", "T": "MEDIUM"}
"""HL7 priority (TQ1-9, ORC-7.6) -> RequestedProcedurePriority (IHE RAD TF-2)."""
_SCHEMES = {"LN": "LN", "SCT": "SCT", "SNM3": "SRT", "RADLEX": "RADLEX", "DCM": "DCM"}
_SEX = {"M": "M", "F": "F", "O": "O", "U": "O", "A": "O"}


@dataclass(frozen=True)
class Order:
    """A worklist item and what the order control asks: ``active`` or ``revoked``."""

    item: WorklistItem
    status: str


def _first(message: Any, *paths: str) -> str:
    for path in paths:
        value = field(message, path)
        if value:
            return value
    return ""


def _name(message: Any, path: str, offset: int = 0) -> str:
    """An XPN (``offset`` 0) or XCN (``offset`` 1) as DICOM PN Family^Given^Middle^Prefix^Suffix
    (HL7 writes the suffix before the prefix)."""
    family, given, middle, suffix, prefix = (
        field(message, f"{path}.{n + offset}") for n in range(1, 6)
    )
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _code(message: Any, path: str, first: int = 1) -> Code | None:
    value, meaning, system = (field(message, f"{path}.{n}") for n in range(first, first + 3))
    if not value:
        return None
    return value, _SCHEMES.get(system.upper(), system or "99LOCAL"), meaning


def _timestamp(value: str) -> tuple[str, str]:
    digits = "".join(c for c in value.split("+")[0].split("-")[0] if c.isdigit() or c == ".")
    return digits[:8], digits[8:].split(".")[0][:6]


def _texts(message: Any, segment: str, *paths: str) -> tuple[str, ...]:
    """The first non-empty of ``paths`` (``field[.repetition.component]``) in every
    ``segment`` segment (NTE, AL1, ...); segments without one are left out."""
    if not has_segment(message, segment):
        return ()
    count = len(message.segments(segment))
    texts = (
        _first(message, *(f"{segment}{index}.{path}" for path in paths))
        for index in range(1, count + 1)
    )
    return tuple(text for text in texts if text)


def _protocols(message: Any) -> tuple[Code, ...]:
    """IPC-6 (every repetition), else the alternate code of OBR-4 (components 4-6)."""
    codes = []
    for repetition in range(1, 100):
        code = _code(message, f"IPC.6.{repetition}")
        if code is None:
            break
        codes.append(code)
    alternate = _code(message, "OBR.4.1", 4)
    return tuple(codes) or ((alternate,) if alternate else ())


def _require(value: str, location: str, what: str) -> str:
    if not value:
        raise HL7Error(f"{what} missing ({location})", REQUIRED_FIELD_MISSING, "AE", location)
    return value


def order_of(message: Any) -> Order:
    """The order of an ORM^O01 / OMI^O23 message; raise :class:`HL7Error` for another type or
    a message without the fields a worklist item needs."""
    kind = message_type(message)
    if kind not in ORDER_TYPES:
        raise HL7Error(
            f"message type {kind} is not an order (ORM^O01, OMI^O23)",
            UNSUPPORTED_MESSAGE_TYPE,
            "AR",
            "MSH^1^9",
        )
    control = field(message, "ORC.1").upper()
    if control not in ACTIVE_CONTROLS | CANCEL_CONTROLS:
        raise HL7Error(
            f"order control {control} is not supported",
            TABLE_VALUE_NOT_FOUND,
            "AE",
            "ORC^1^1",
        )
    accession = _require(_first(message, "IPC.1.1.1", "OBR.18"), "OBR^1^18", "accession number")
    modality = _require(_first(message, "IPC.5.1.1", "OBR.24"), "OBR^1^24", "modality").upper()
    if modality not in MODALITIES:
        raise HL7Error(
            f"modality {modality} is not an acquisition modality",
            TABLE_VALUE_NOT_FOUND,
            "AE",
            "OBR^1^24",
        )
    patient_id = _require(field(message, "PID.3.1.1"), "PID^1^3", "patient identifier")
    requested = _code(message, "OBR.44.1") or _code(message, "OBR.4.1")
    description = _first(message, "OBR.44.1.2", "OBR.4.1.2")
    start = _first(message, "TQ1.7.1.1", "ORC.7.1.4", "OBR.27.1.4", "OBR.7.1.1")
    date, time = _timestamp(start)
    priority = _first(message, "TQ1.9.1.1", "ORC.7.1.6", "OBR.27.1.6").upper()[:1]
    requester = _name(message, "ORC.12.1", 1) or _name(message, "OBR.16.1", 1)
    titles = tuple(t for t in [field(message, "IPC.9")] if t)
    stations = tuple(t for t in [field(message, "IPC.7.1.1")] if t)
    item = WorklistItem(
        service_request_id="",
        accession_number=accession,
        requested_procedure_id=_first(message, "IPC.2.1.1", "OBR.19") or accession,
        requested_procedure_description=description,
        requested_procedure_code=requested,
        requested_procedure_priority=PRIORITIES.get(priority, ""),
        study_instance_uid=_first(message, "IPC.3.1.1", "ZDS.1.1.1"),
        modality=modality,
        scheduled_station_ae_titles=titles,
        start_date=date,
        start_time=time,
        scheduled_performing_physician_name="",
        scheduled_procedure_step_id=_first(message, "IPC.4.1.1", "OBR.20") or accession,
        scheduled_procedure_step_description=field(message, "OBR.4.1.5") or description,
        referring_physician_name=_name(message, "PV1.8.1", 1) or requester,
        requesting_physician=requester,
        patient_name=_name(message, "PID.5.1"),
        patient_id=patient_id,
        issuer_of_patient_id=field(message, "PID.3.1.4"),
        patient_birth_date=field(message, "PID.7.1.1")[:8],
        patient_sex=_SEX.get(field(message, "PID.8").upper(), ""),
        admission_id=field(message, "PV1.19.1.1"),
        scheduled_station_names=stations,
        scheduled_procedure_step_location=_first(message, "IPC.8.1.2", "IPC.8.1.1"),
        scheduled_protocol_codes=_protocols(message),
        medical_alerts=tuple(t for t in [field(message, "OBR.13")] if t),
        allergies=_texts(message, "AL1", "3.1.2", "3.1.1"),
        requested_procedure_comments="\n".join(_texts(message, "NTE", "3")),
    )
    return Order(item, "revoked" if control in CANCEL_CONTROLS else "active")
