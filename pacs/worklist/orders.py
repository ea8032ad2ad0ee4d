"""Worklist items into FHIR: the inverse of ``pacs.worklist.items`` (imports, HL7 orders).

``service_request_of(item, patient_id)`` builds the ServiceRequest whose worklist item is
``item`` again (a round trip the tests pin); ``store_order`` finds or creates the Patient and
creates or replaces the ServiceRequest with the item's accession number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacs.emr.identifiers import (
    ACCESSION_SYSTEM,
    DCM,
    DICOM_UID,
    V2_0203,
    accession_identifier,
    patient_system,
)
from pacs.errors import PacsError
from pacs.fhir.resources import found
from pacs.fhir.store import FhirStore
from pacs.fhir.values import escape_search_value
from pacs.worklist.items import (
    CODING_SCHEME,
    PRIORITIES,
    REQUESTED_PROCEDURE_ID,
    SCHEDULED_PROCEDURE_STEP_ID,
    SCHEMES,
    WORKLIST_EXTENSION,
    Code,
    WorklistItem,
)

FHIR_PRIORITY = {"STAT": "stat", "HIGH": "asap", "ROUTINE": "routine"}
"""RequestedProcedurePriority -> ServiceRequest.priority (MEDIUM and LOW: ``routine`` plus the
priority extension, which keeps the DICOM value)."""
_GENDER = {"M": "male", "F": "female", "O": "other"}
_SYSTEMS = {scheme: system for system, scheme in SCHEMES.items()}


class OrderError(PacsError, ValueError):
    """An item that cannot become a ServiceRequest (what is missing is named)."""


@dataclass(frozen=True)
class StoredOrder:
    """The ServiceRequest an order became and whether it was new."""

    service_request: dict[str, Any]
    created: bool


def human_name(pn: str) -> dict[str, Any]:
    """A DICOM PN (its alphabetic group) as a FHIR HumanName."""
    family, given, middle, prefix, suffix = ([*pn.split("=")[0].split("^"), "", "", "", ""])[:5]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, *middle.split()) if g]
    if prefix:
        name["prefix"] = prefix.split()
    if suffix:
        name["suffix"] = suffix.split()
    return name


def coding(code: Code) -> dict[str, str]:
    """A DICOM code as a FHIR Coding."""
    value, scheme, meaning = code
    system = _SYSTEMS.get(scheme, CODING_SCHEME + scheme)
    return {"system": system, "code": value, **({"display": meaning} if meaning else {})}


def _occurrence(date: str, time: str) -> str:
    """DICOM DA + TM as a FHIR dateTime in the server's time zone (the wall clock kept)."""
    if len(date) != 8:
        return ""
    digits = (time.split(".")[0] + "000000")[:6] if time else ""
    if not digits:
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    moment = datetime.strptime(date + digits, "%Y%m%d%H%M%S").astimezone()
    return moment.isoformat()


def _extensions(item: WorklistItem) -> list[dict[str, str]]:
    values: list[tuple[str, str]] = [
        ("ScheduledStationAETitle", title) for title in item.scheduled_station_ae_titles
    ]
    if item.scheduled_procedure_step_description != item.requested_procedure_description:
        values.append(
            ("ScheduledProcedureStepDescription", item.scheduled_procedure_step_description)
        )
    priority = FHIR_PRIORITY.get(item.requested_procedure_priority)
    if item.requested_procedure_priority and PRIORITIES.get(str(priority)) != (
        item.requested_procedure_priority
    ):
        values.append(("RequestedProcedurePriority", item.requested_procedure_priority))
    values += [
        ("RequestedContrastAgent", item.requested_contrast_agent),
        ("PreMedication", item.pre_medication),
        ("CommentsOnTheScheduledProcedureStep", item.comments_on_the_scheduled_procedure_step),
    ]
    return [{"url": WORKLIST_EXTENSION + k, "valueString": v} for k, v in values if v]


def _contained(item: WorklistItem, patient: dict[str, str]) -> dict[str, list[Any]]:
    """Contained resources and the elements that refer to them."""
    contained: list[dict[str, Any]] = []
    refs: dict[str, list[Any]] = {"performer": [], "supportingInfo": [], "contained": contained}
    requester = item.referring_physician_name or item.requesting_physician
    if requester:
        contained.append(
            {"resourceType": "Practitioner", "id": "requester", "name": [human_name(requester)]}
        )
        refs["requester"] = [{"reference": "#requester"}]
    if item.scheduled_performing_physician_name:
        contained.append(
            {
                "resourceType": "Practitioner",
                "id": "performer",
                "name": [human_name(item.scheduled_performing_physician_name)],
            }
        )
        refs["performer"].append({"reference": "#performer"})
    for n, name in enumerate(item.scheduled_station_names, start=1):
        contained.append(
            {
                "resourceType": "Device",
                "id": f"station{n}",
                "deviceName": [{"name": name, "type": "user-friendly-name"}],
            }
        )
        refs["performer"].append({"reference": f"#station{n}"})
    for n, alert in enumerate(item.medical_alerts, start=1):
        contained.append(
            {
                "resourceType": "Flag",
                "id": f"alert{n}",
                "status": "active",
                "code": {"text": alert},
                "subject": patient,
            }
        )
        refs["supportingInfo"].append({"reference": f"#alert{n}"})
    for n, allergy in enumerate(item.allergies, start=1):
        contained.append(
            {
                "resourceType": "AllergyIntolerance",
                "id": f"allergy{n}",
                "code": {"text": allergy},
                "patient": patient,
            }
        )
        refs["supportingInfo"].append({"reference": f"#allergy{n}"})
    if item.admission_id:
        contained.append(
            {
                "resourceType": "Encounter",
                "id": "encounter",
                "status": "unknown",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
                    "code": "UNK",
                },
                "identifier": [{"value": item.admission_id}],
                "subject": patient,
            }
        )
        refs["encounter"] = [{"reference": "#encounter"}]
    return refs


def service_request_of(item: WorklistItem, patient_id: str) -> dict[str, Any]:
    """The active ServiceRequest (subject ``Patient/<patient_id>``) whose item is ``item``."""
    if not item.accession_number or not item.modality:
        raise OrderError("an order needs an accession number and a modality")
    patient = {"reference": f"Patient/{patient_id}"}
    identifiers = [accession_identifier(item.accession_number)]
    for system, value in (
        (REQUESTED_PROCEDURE_ID, item.requested_procedure_id),
        (SCHEDULED_PROCEDURE_STEP_ID, item.scheduled_procedure_step_id),
    ):
        if value and value != item.accession_number:
            identifiers.append({"system": system, "value": value})
    if item.study_instance_uid:
        identifiers.append({"system": DICOM_UID, "value": f"urn:oid:{item.study_instance_uid}"})
    codings = [coding(item.requested_procedure_code)] if item.requested_procedure_code else []
    code: dict[str, Any] = {"coding": [*codings, {"system": DCM, "code": item.modality}]}
    if item.requested_procedure_description:
        code["text"] = item.requested_procedure_description
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": identifiers,
        "code": code,
        "subject": patient,
    }
    priority = FHIR_PRIORITY.get(item.requested_procedure_priority) or (
        "routine" if item.requested_procedure_priority else ""
    )
    optional: dict[str, Any] = {
        "extension": _extensions(item),
        "priority": priority,
        "occurrenceDateTime": _occurrence(item.start_date, item.start_time),
        "locationCode": [{"text": item.scheduled_procedure_step_location}]
        if item.scheduled_procedure_step_location
        else [],
        "orderDetail": [{"coding": [coding(c)]} for c in item.scheduled_protocol_codes],
        "note": [{"text": item.requested_procedure_comments}]
        if item.requested_procedure_comments
        else [],
    }
    for key, refs in _contained(item, patient).items():
        optional[key] = refs[0] if key in ("requester", "encounter") else refs
    resource.update({k: v for k, v in optional.items() if v})
    return resource


def patient_of(item: WorklistItem) -> dict[str, Any]:
    """A Patient with the item's identifier and demographics."""
    if not item.patient_id:
        raise OrderError("an order needs a PatientID")
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": patient_system(item.issuer_of_patient_id),
                "value": item.patient_id,
            }
        ],
    }
    name = human_name(item.patient_name)
    if name:
        patient["name"] = [name]
    date = item.patient_birth_date
    if len(date) == 8 and date.isdigit():
        patient["birthDate"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    if item.patient_sex in _GENDER:
        patient["gender"] = _GENDER[item.patient_sex]
    return patient


def store_order(store: FhirStore, item: WorklistItem, status: str = "active") -> StoredOrder:
    """Find (by identifier) or create the Patient, then create or replace the ServiceRequest
    with the item's accession number (``status``: ``revoked`` cancels an order)."""
    patient = patient_of(item)
    identifier = patient["identifier"][0]
    token = f"{escape_search_value(identifier['system'])}|{escape_search_value(item.patient_id)}"
    existing = found(store.search("Patient", [("identifier", token)]), "Patient")
    patient_id = str(existing[0]["id"]) if existing else str(store.create(patient)["id"])
    resource = {**service_request_of(item, patient_id), "status": status}
    token = f"{ACCESSION_SYSTEM}|{escape_search_value(item.accession_number)}"
    before = found(store.search("ServiceRequest", [("identifier", token)]), "ServiceRequest")
    stored = store.upsert_by_identifier(resource, ACCESSION_SYSTEM, item.accession_number)
    return StoredOrder(stored, created=not before)
