"""A Modality Worklist item (one Scheduled Procedure Step) made from a FHIR ServiceRequest.

Mapping (docs/conformance.md, Modality Worklist SCP):

- AccessionNumber, RequestedProcedureID, ScheduledProcedureStepID: the ServiceRequest's
  accession number (identifier of type ACSN); one requested procedure with one step.
- RequestedProcedureDescription, ScheduledProcedureStepDescription: ``code.text`` (or the
  first coding's display); RequestedProcedureCodeSequence: the first coding of ``code`` that
  is not a modality.
- Modality: a coding in the DICOM system (DCM) in ``code``, ``category`` or ``orderDetail``.
- ScheduledProcedureStepStartDate/Time: ``occurrenceDateTime`` (or ``occurrencePeriod.start``),
  as the wall-clock date and time written there.
- ScheduledStationAETitle: the registered remote AEs (``pacs ae``) of the performer
  Organization (matched by name); ScheduledPerformingPhysicianName: the performer Practitioner
  (directly or through a PractitionerRole).
- ReferringPhysicianName, RequestingPhysician: the requester Practitioner.
- StudyInstanceUID: an identifier in ``urn:dicom:uid`` if the request has one, else a UID
  derived from the request's id (stable across queries).
- Patient: PatientName, PatientID / IssuerOfPatientID (the MR identifier, else the first),
  PatientBirthDate, PatientSex; AdmissionID: the Encounter's first identifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.uid import generate_uid

from pacs.emr.identifiers import (
    DCM,
    DICOM_UID,
    accession_of,
    issuer_of,
    preferred_patient_identifier,
    reference_id,
)

Resolver = Callable[[str, str], dict[str, Any] | None]
"""``resolve(resource_type, id)``: the current resource, or None if it does not exist."""

MODALITIES = frozenset(
    [
        "CR",
        "CT",
        "DX",
        "ES",
        "MG",
        "MR",
        "NM",
        "OT",
        "PT",
        "RF",
        "RG",
        "SC",
        "US",
        "XA",
        "IO",
        "PX",
        "ECG",
        "IVUS",
        "OCT",
        "OP",
        "SM",
        "BMD",
        "DMS",
    ]
)
"""Acquisition modality codes (DCM) accepted as the requested Modality."""

_SCHEMES = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    DCM: "DCM",
    "http://www.radlex.org": "RADLEX",
}
_PRIORITY = {"routine": "ROUTINE", "urgent": "HIGH", "asap": "HIGH", "stat": "STAT"}
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "O"}


@dataclass(frozen=True)
class WorklistItem:
    """One Scheduled Procedure Step, with DICOM-formatted values ('' when unknown)."""

    service_request_id: str
    accession_number: str
    requested_procedure_id: str
    requested_procedure_description: str
    requested_procedure_code: tuple[str, str, str] | None  # (value, scheme, meaning)
    requested_procedure_priority: str
    study_instance_uid: str
    modality: str
    scheduled_station_ae_titles: tuple[str, ...]
    start_date: str
    start_time: str
    scheduled_performing_physician_name: str
    scheduled_procedure_step_id: str
    scheduled_procedure_step_description: str
    referring_physician_name: str
    requesting_physician: str
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    admission_id: str = ""
    scheduled_procedure_step_status: str = "SCHEDULED"


def person_name(resource: dict[str, Any] | None) -> str:
    """A FHIR HumanName (the first ``official``/``usual`` one, else the first) as DICOM PN
    ``Family^Given^Middle^Prefix^Suffix``."""
    names = (resource or {}).get("name") or []
    if not names:
        return ""
    name = next((n for n in names if n.get("use") in ("official", "usual")), names[0])
    given = list(name.get("given") or [])
    parts = [
        str(name.get("family") or ""),
        given[0] if given else "",
        " ".join(given[1:]),
        " ".join(name.get("prefix") or []),
        " ".join(name.get("suffix") or []),
    ]
    if not any(parts):
        return str(name.get("text") or "")
    return "^".join(parts).rstrip("^")


def _date_time(value: str) -> tuple[str, str]:
    """FHIR dateTime ``YYYY-MM-DDThh:mm:ss[.fff][+zz:zz]`` as DICOM (DA, TM) wall clock."""
    date, _, time = value.partition("T")
    for sign in ("+", "-", "Z"):
        time = time.split(sign)[0]
    return date.replace("-", ""), time.replace(":", "")


def _modality(service_request: dict[str, Any]) -> str:
    concepts = [service_request.get("code") or {}]
    concepts += service_request.get("category") or []
    concepts += service_request.get("orderDetail") or []
    for concept in concepts:
        for coding in concept.get("coding") or []:
            if coding.get("system") == DCM and coding.get("code") in MODALITIES:
                return str(coding["code"])
    return ""


def _procedure_code(code: dict[str, Any]) -> tuple[str, str, str] | None:
    for coding in code.get("coding") or []:
        if coding.get("system") == DCM and coding.get("code") in MODALITIES:
            continue
        if coding.get("code"):
            scheme = _SCHEMES.get(str(coding.get("system") or ""), "99LOCAL")
            return str(coding["code"]), scheme, str(coding.get("display") or code.get("text") or "")
    return None


def _description(code: dict[str, Any]) -> str:
    if code.get("text"):
        return str(code["text"])
    for coding in code.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    return ""


def _practitioner(reference: dict[str, Any], resolve: Resolver) -> dict[str, Any] | None:
    """The Practitioner of a reference to a Practitioner or a PractitionerRole."""
    practitioner_id = reference_id(reference, "Practitioner")
    if practitioner_id:
        return resolve("Practitioner", practitioner_id)
    role_id = reference_id(reference, "PractitionerRole")
    role = resolve("PractitionerRole", role_id) if role_id else None
    if role is None:
        return None
    inner = reference_id(role.get("practitioner"), "Practitioner")
    return resolve("Practitioner", inner) if inner else None


def _organisation_name(reference: dict[str, Any], resolve: Resolver) -> str:
    organisation_id = reference_id(reference, "Organization")
    organisation = resolve("Organization", organisation_id) if organisation_id else None
    if organisation is None:
        role_id = reference_id(reference, "PractitionerRole")
        role = resolve("PractitionerRole", role_id) if role_id else None
        inner = reference_id((role or {}).get("organization"), "Organization")
        organisation = resolve("Organization", inner) if inner else None
    return str((organisation or {}).get("name") or "")


def _study_instance_uid(service_request: dict[str, Any]) -> str:
    for identifier in service_request.get("identifier") or []:
        value = str(identifier.get("value") or "")
        if identifier.get("system") == DICOM_UID and value:
            return value.removeprefix("urn:oid:")
    return str(generate_uid(entropy_srcs=["ServiceRequest", str(service_request.get("id"))]))


def item_from_service_request(
    service_request: dict[str, Any],
    resolve: Resolver,
    ae_titles_of: Callable[[str], list[str]],
) -> WorklistItem | None:
    """The worklist item of an active ServiceRequest, or None when it cannot be one (not
    active, no accession number, no modality, no patient subject)."""
    if service_request.get("status") != "active":
        return None
    accession = accession_of(service_request)
    modality = _modality(service_request)
    patient_id = reference_id(service_request.get("subject"), "Patient")
    if not accession or not modality or not patient_id:
        return None
    patient = resolve("Patient", patient_id) or {}
    identifier = preferred_patient_identifier(patient) or {}
    occurrence = str(
        service_request.get("occurrenceDateTime")
        or (service_request.get("occurrencePeriod") or {}).get("start")
        or ""
    )
    start_date, start_time = _date_time(occurrence) if occurrence else ("", "")
    performers = service_request.get("performer") or []
    performing = next(
        (p for p in (_practitioner(ref, resolve) for ref in performers) if p is not None), None
    )
    titles: list[str] = []
    for ref in performers:
        name = _organisation_name(ref, resolve)
        if name:
            titles += [t for t in ae_titles_of(name) if t not in titles]
    requester = (
        _practitioner(service_request["requester"], resolve)
        if service_request.get("requester")
        else None
    )
    encounter_id = reference_id(service_request.get("encounter"), "Encounter")
    encounter = resolve("Encounter", encounter_id) if encounter_id else None
    admission = next(
        (str(i["value"]) for i in (encounter or {}).get("identifier") or [] if i.get("value")),
        "",
    )
    code = service_request.get("code") or {}
    description = _description(code)
    return WorklistItem(
        service_request_id=str(service_request.get("id") or ""),
        accession_number=accession,
        requested_procedure_id=accession,
        requested_procedure_description=description,
        requested_procedure_code=_procedure_code(code),
        requested_procedure_priority=_PRIORITY.get(str(service_request.get("priority")), ""),
        study_instance_uid=_study_instance_uid(service_request),
        modality=modality,
        scheduled_station_ae_titles=tuple(titles),
        start_date=start_date,
        start_time=start_time,
        scheduled_performing_physician_name=person_name(performing),
        scheduled_procedure_step_id=accession,
        scheduled_procedure_step_description=description,
        referring_physician_name=person_name(requester),
        requesting_physician=person_name(requester),
        patient_name=person_name(patient),
        patient_id=str(identifier.get("value") or ""),
        issuer_of_patient_id=issuer_of(identifier) if identifier else "",
        patient_birth_date=str(patient.get("birthDate") or "").replace("-", ""),
        patient_sex=_SEX.get(str(patient.get("gender")), ""),
        admission_id=admission,
    )
