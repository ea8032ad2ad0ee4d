"""A Modality Worklist item (one Scheduled Procedure Step) made from a FHIR ServiceRequest.

One ServiceRequest is one Requested Procedure with one Scheduled Procedure Step. The mapping
of every attribute is the table in docs/conformance.md (Modality Worklist SCP); in short:
standard ServiceRequest elements where FHIR has one (identifier, code, priority, occurrence,
performer, requester, locationCode, orderDetail, note, supportingInfo), contained resources
for what belongs to another resource type (a Device as the scheduled station, Flag and
AllergyIntolerance as medical alerts and allergies), and an extension named after the DICOM
keyword (``urn:pacs:worklist:<Keyword>``, ``valueString``) for the rest.
``pacs.worklist.orders`` writes the inverse mapping (importing items into ServiceRequests).
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

Code = tuple[str, str, str]
"""A coded entry: (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

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

WORKLIST_EXTENSION = "urn:pacs:worklist:"
"""Extension URL prefix: ``urn:pacs:worklist:<DICOM keyword>`` with a ``valueString``."""
REQUESTED_PROCEDURE_ID = "urn:pacs:requested-procedure-id"
"""ServiceRequest.identifier system of the RequestedProcedureID."""
SCHEDULED_PROCEDURE_STEP_ID = "urn:pacs:scheduled-procedure-step-id"
"""ServiceRequest.identifier system of the ScheduledProcedureStepID."""

SCHEMES = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    DCM: "DCM",
    "http://www.radlex.org": "RADLEX",
}
"""FHIR code systems and their DICOM Coding Scheme Designators."""
CODING_SCHEME = "urn:pacs:coding-scheme:"
"""Code system of any other DICOM Coding Scheme Designator: ``urn:pacs:coding-scheme:<CSD>``;
a code in a system that is neither this nor in ``SCHEMES`` is given as ``99LOCAL``."""
PRIORITIES = {"routine": "ROUTINE", "urgent": "HIGH", "asap": "HIGH", "stat": "STAT"}
"""ServiceRequest.priority -> RequestedProcedurePriority."""
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "O"}


@dataclass(frozen=True)
class WorklistItem:
    """One Scheduled Procedure Step, with DICOM-formatted values ('' when unknown)."""

    service_request_id: str
    accession_number: str
    requested_procedure_id: str
    requested_procedure_description: str
    requested_procedure_code: Code | None
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
    scheduled_station_names: tuple[str, ...] = ()
    scheduled_procedure_step_location: str = ""
    scheduled_protocol_codes: tuple[Code, ...] = ()
    medical_alerts: tuple[str, ...] = ()
    allergies: tuple[str, ...] = ()
    requested_contrast_agent: str = ""
    pre_medication: str = ""
    requested_procedure_comments: str = ""
    comments_on_the_scheduled_procedure_step: str = ""


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


def _is_modality(coding: dict[str, Any]) -> bool:
    return coding.get("system") == DCM and coding.get("code") in MODALITIES


def _modality(service_request: dict[str, Any]) -> str:
    concepts = [service_request.get("code") or {}]
    concepts += service_request.get("category") or []
    concepts += service_request.get("orderDetail") or []
    for concept in concepts:
        for coding in concept.get("coding") or []:
            if _is_modality(coding):
                return str(coding["code"])
    return ""


def _scheme(system: str) -> str:
    if system.startswith(CODING_SCHEME):
        return system.removeprefix(CODING_SCHEME)
    return SCHEMES.get(system, "99LOCAL")


def _codes(concept: dict[str, Any]) -> list[Code]:
    """The codings of a CodeableConcept that are not modalities, as DICOM codes."""
    return [
        (
            str(coding["code"]),
            _scheme(str(coding.get("system") or "")),
            str(coding.get("display") or concept.get("text") or ""),
        )
        for coding in concept.get("coding") or []
        if coding.get("code") and not _is_modality(coding)
    ]


def _text(concept: dict[str, Any]) -> str:
    """A CodeableConcept's text, else its first coding's display."""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    return ""


def extension_values(resource: dict[str, Any], keyword: str) -> list[str]:
    """The ``valueString`` of every ``urn:pacs:worklist:<keyword>`` extension."""
    url = WORKLIST_EXTENSION + keyword
    return [
        str(e["valueString"])
        for e in resource.get("extension") or []
        if e.get("url") == url and e.get("valueString")
    ]


def _extension(resource: dict[str, Any], keyword: str) -> str:
    values = extension_values(resource, keyword)
    return values[0] if values else ""


def _identifier(service_request: dict[str, Any], system: str) -> str:
    for identifier in service_request.get("identifier") or []:
        if identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return ""


def _referenced(
    service_request: dict[str, Any], reference: dict[str, Any] | None, resolve: Resolver
) -> dict[str, Any] | None:
    """The resource a reference points to: a contained one (``#id``) or a stored one."""
    text = str((reference or {}).get("reference") or "")
    if text.startswith("#"):
        return next(
            (r for r in service_request.get("contained") or [] if r.get("id") == text[1:]), None
        )
    kind, _, rest = text.partition("/")
    if not kind or not rest:
        return None
    return resolve(kind, rest.split("/_history/")[0])


def _practitioner(
    service_request: dict[str, Any], reference: dict[str, Any], resolve: Resolver
) -> dict[str, Any] | None:
    """The Practitioner of a reference to a Practitioner or a PractitionerRole."""
    target = _referenced(service_request, reference, resolve) or {}
    if target.get("resourceType") == "PractitionerRole":
        target = _referenced(service_request, target.get("practitioner"), resolve) or {}
    return target if target.get("resourceType") == "Practitioner" else None


def _organisation_name(reference: dict[str, Any], resolve: Resolver) -> str:
    organisation_id = reference_id(reference, "Organization")
    organisation = resolve("Organization", organisation_id) if organisation_id else None
    if organisation is None:
        role_id = reference_id(reference, "PractitionerRole")
        role = resolve("PractitionerRole", role_id) if role_id else None
        inner = reference_id((role or {}).get("organization"), "Organization")
        organisation = resolve("Organization", inner) if inner else None
    return str((organisation or {}).get("name") or "")


def _station_names(service_request: dict[str, Any], resolve: Resolver) -> tuple[str, ...]:
    """The names of the performer Devices (contained or stored)."""
    names: list[str] = []
    for ref in service_request.get("performer") or []:
        target = _referenced(service_request, ref, resolve) or {}
        if target.get("resourceType") != "Device":
            continue
        for device_name in target.get("deviceName") or []:
            if device_name.get("name") and device_name["name"] not in names:
                names.append(str(device_name["name"]))
    return tuple(names)


def _supporting(
    service_request: dict[str, Any], resolve: Resolver, resource_type: str
) -> tuple[str, ...]:
    """The code texts of the supportingInfo resources of ``resource_type`` (Flag: medical
    alerts, AllergyIntolerance: allergies)."""
    texts: list[str] = []
    for ref in service_request.get("supportingInfo") or []:
        target = _referenced(service_request, ref, resolve) or {}
        if target.get("resourceType") == resource_type:
            text = _text(target.get("code") or {})
            if text:
                texts.append(text)
    return tuple(texts)


def _study_instance_uid(service_request: dict[str, Any]) -> str:
    value = _identifier(service_request, DICOM_UID)
    if value:
        return value.removeprefix("urn:oid:")
    return str(generate_uid(entropy_srcs=["ServiceRequest", str(service_request.get("id"))]))


def _location(service_request: dict[str, Any]) -> str:
    for concept in service_request.get("locationCode") or []:
        if _text(concept):
            return _text(concept)
    return ""


def _notes(service_request: dict[str, Any]) -> str:
    return "\n".join(str(n["text"]) for n in service_request.get("note") or [] if n.get("text"))


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
        (
            p
            for p in (_practitioner(service_request, ref, resolve) for ref in performers)
            if p is not None
        ),
        None,
    )
    titles = extension_values(service_request, "ScheduledStationAETitle")
    for ref in performers:
        name = _organisation_name(ref, resolve)
        if name:
            titles += [t for t in ae_titles_of(name) if t not in titles]
    requester = (
        _practitioner(service_request, service_request["requester"], resolve)
        if service_request.get("requester")
        else None
    )
    encounter = _referenced(service_request, service_request.get("encounter"), resolve)
    admission = next(
        (str(i["value"]) for i in (encounter or {}).get("identifier") or [] if i.get("value")),
        "",
    )
    code = service_request.get("code") or {}
    description = _text(code)
    codes = _codes(code)
    return WorklistItem(
        service_request_id=str(service_request.get("id") or ""),
        accession_number=accession,
        requested_procedure_id=_identifier(service_request, REQUESTED_PROCEDURE_ID) or accession,
        requested_procedure_description=description,
        requested_procedure_code=codes[0] if codes else None,
        requested_procedure_priority=_extension(service_request, "RequestedProcedurePriority")
        or PRIORITIES.get(str(service_request.get("priority")), ""),
        study_instance_uid=_study_instance_uid(service_request),
        modality=modality,
        scheduled_station_ae_titles=tuple(titles),
        start_date=start_date,
        start_time=start_time,
        scheduled_performing_physician_name=person_name(performing),
        scheduled_procedure_step_id=_identifier(service_request, SCHEDULED_PROCEDURE_STEP_ID)
        or accession,
        scheduled_procedure_step_description=_extension(
            service_request, "ScheduledProcedureStepDescription"
        )
        or description,
        referring_physician_name=person_name(requester),
        requesting_physician=person_name(requester),
        patient_name=person_name(patient),
        patient_id=str(identifier.get("value") or ""),
        issuer_of_patient_id=issuer_of(identifier) if identifier else "",
        patient_birth_date=str(patient.get("birthDate") or "").replace("-", ""),
        patient_sex=_SEX.get(str(patient.get("gender")), ""),
        admission_id=admission,
        scheduled_station_names=_station_names(service_request, resolve),
        scheduled_procedure_step_location=_location(service_request),
        scheduled_protocol_codes=tuple(
            c for detail in service_request.get("orderDetail") or [] for c in _codes(detail)
        ),
        medical_alerts=_supporting(service_request, resolve, "Flag"),
        allergies=_supporting(service_request, resolve, "AllergyIntolerance"),
        requested_contrast_agent=_extension(service_request, "RequestedContrastAgent"),
        pre_medication=_extension(service_request, "PreMedication"),
        requested_procedure_comments=_notes(service_request),
        comments_on_the_scheduled_procedure_step=_extension(
            service_request, "CommentsOnTheScheduledProcedureStep"
        ),
    )
