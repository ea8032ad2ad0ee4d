"""Study -> record: the ImagingStudy of an archived study, linked to Patient, ServiceRequest
and Encounter.

- ImagingStudy.identifier: ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>`` (the upsert key)
  and the accession number (type ACSN).
- Patient: found by identifier (PatientID, IssuerOfPatientID -> ``identifiers.patient_system``);
  else the subject of the ServiceRequest with the study's accession number; else a Patient is
  created from the DICOM demographics with meta.tag ``urn:pacs:tags|reconcile``. A Patient
  found either way is linked only when its demographics do not contradict the study's
  (``matching``): else the study gets a reconcile-tagged Patient of its own (identifier
  ``urn:pacs:unmatched-patient``), no basedOn, and is flagged for reconciliation.
- basedOn: the ServiceRequest whose accession number is the study's; encounter: its encounter.
- endpoint: the archive's DICOMweb Endpoint (``connectionType`` dicom-wado-rs).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.emr import matching
from pacs.emr.identifiers import (
    DCM,
    DICOM_UID,
    ENDPOINT,
    RECONCILE_TAG,
    UNMATCHED_PATIENT,
    accession_identifier,
    accession_of,
    issuer_of,
    patient_system,
    reference_id,
    study_identifier,
    token_search_value,
)
from pacs.fhir.errors import FhirError
from pacs.fhir.resources import found
from pacs.fhir.store import FhirStore
from pacs.identity import Demographics
from pacs.index.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)

_GENDER = {"M": "male", "F": "female", "O": "other"}


def fhir_datetime(date: str, time: str = "") -> str | None:
    """DICOM DA (+ TM) as a FHIR dateTime; a time gets the server's local UTC offset, since
    DICOM dates and times are local (FHIR requires a zone once hours are given)."""
    if len(date) != 8 or not date.isdigit():
        return None
    try:  # an impossible date (20241340) is left out, not sent for FHIR to refuse
        datetime.strptime(date, "%Y%m%d")
    except ValueError:
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = time.split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return day
    hhmmss = (digits + "00")[:6]
    try:
        local = datetime.strptime(day + hhmmss, "%Y-%m-%d%H%M%S").astimezone()
    except ValueError:
        return day
    return local.isoformat()


def dicomweb_endpoint(store: FhirStore, base_url: str) -> str:
    """The id of the archive's DICOMweb Endpoint (created or refreshed)."""
    endpoint = {
        "resourceType": "Endpoint",
        "identifier": [{"system": ENDPOINT, "value": "dicomweb"}],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "payloadType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                        "code": "DICOM",
                    }
                ]
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": base_url.rstrip("/") + "/dicomweb",
    }
    return str(store.upsert_by_identifier(endpoint, ENDPOINT, "dicomweb")["id"])


def find_service_request(store: FhirStore, accession: str) -> dict[str, Any] | None:
    """The ServiceRequest whose accession number is ``accession`` (the newest if several)."""
    token = token_search_value(accession)
    if not token:
        return None
    bundle = store.search("ServiceRequest", [("identifier", token), ("_sort", "-_lastUpdated")])
    for request in found(bundle, "ServiceRequest"):
        if accession_of(request) == accession:
            return request
    return None


def find_patient(store: FhirStore, patient_id: str, issuer: str) -> dict[str, Any] | None:
    """The Patient with identifier ``patient_id`` from ``issuer`` (any issuer when empty and
    exactly one Patient has that value); registered Patients before reconcile-tagged ones."""
    token = token_search_value(patient_id)
    if not token:
        return None
    bundle = store.search("Patient", [("identifier", token)])
    candidates = []
    for patient in found(bundle, "Patient"):
        for identifier in patient.get("identifier") or []:
            if identifier.get("value") != patient_id:
                continue
            if not issuer or issuer_of(identifier) == issuer:
                candidates.append(patient)
                break
    registered = [p for p in candidates if RECONCILE_TAG["code"] not in _tags(p)]
    pool = registered or candidates  # a registered patient wins over one made from DICOM
    return pool[0] if len(pool) == 1 or (pool and issuer) else None


def _tags(resource: dict[str, Any]) -> set[str]:
    return {
        str(tag.get("code"))
        for tag in (resource.get("meta") or {}).get("tag") or []
        if tag.get("system") == RECONCILE_TAG["system"]
    }


def _dicom_name(pn: str) -> dict[str, Any] | None:
    """A DICOM PN as a HumanName; None when it has no text (``^``)."""
    family, _, rest = pn.partition("^")
    given, _, rest = rest.partition("^")
    middle, _, rest = rest.partition("^")
    prefix, _, suffix = rest.partition("^")
    text = " ".join(p for p in (prefix, given, middle, family) if p)
    name: dict[str, Any] = {"text": text} if text else {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name or None


def reconcile_patient(
    store: FhirStore, patient: Patient, unmatched: bool = False
) -> dict[str, Any]:
    """A Patient made from the study's DICOM demographics, flagged for reconciliation (the
    same one again for the same PatientID and issuer). ``unmatched``: the PatientID belongs
    to a FHIR Patient whose demographics contradict, so the identifier is the archive's own
    (``urn:pacs:unmatched-patient``, the index's patient number), never that Patient's."""
    system = patient_system(patient.issuer_of_patient_id)
    value = patient.patient_id or f"unknown-{patient.pk}"
    if unmatched:
        system, value = UNMATCHED_PATIENT, str(patient.pk)
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"tag": [RECONCILE_TAG]},
        "identifier": [{"system": system, "value": value}],
    }
    if patient.issuer_of_patient_id and not unmatched:
        resource["identifier"][0]["assigner"] = {"display": patient.issuer_of_patient_id}
    name = _dicom_name(patient.patient_name.split("=")[0])
    if name:
        resource["name"] = [name]
    if _GENDER.get(patient.patient_sex):
        resource["gender"] = _GENDER[patient.patient_sex]
    birth = fhir_datetime(patient.patient_birth_date)
    if birth:
        resource["birthDate"] = birth
    return store.upsert_by_identifier(resource, system, value)


_UNSIGNED_INT_MAX = 2**31 - 1


def _number(value: int | None) -> dict[str, int]:
    """``{"number": value}`` when FHIR's unsignedInt can hold it, else nothing: a negative
    DICOM SeriesNumber or InstanceNumber stays in the DICOM objects only."""
    return {"number": value} if value is not None and 0 <= value <= _UNSIGNED_INT_MAX else {}


def _series(series: Series, instances: list[Instance], endpoint: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "uid": series.series_instance_uid,
        "modality": {"system": DCM, "code": series.modality or "OT"},
        "numberOfInstances": len(instances),
        "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
        "instance": [
            {
                "uid": instance.sop_instance_uid,
                "sopClass": {
                    "system": "urn:ietf:rfc:3986",
                    "code": f"urn:oid:{instance.sop_class_uid}",
                },
                **_number(instance.instance_number),
            }
            for instance in instances
        ],
    }
    item.update(_number(series.series_number))
    if series.series_description:
        item["description"] = series.series_description
    started = fhir_datetime(series.series_date, series.series_time)
    if started:
        item["started"] = started
    return item


def imaging_study(
    session: Session,
    study: Study,
    patient_id: str,
    endpoint: str,
    service_request: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ImagingStudy resource of ``study`` (from the index, current counts)."""
    series_rows = session.scalars(
        select(Series).where(Series.study_pk == study.pk).order_by(Series.pk)
    ).all()
    series = []
    instances_total = 0
    for row in series_rows:
        instances = session.scalars(
            select(Instance)
            .where(Instance.series_pk == row.pk)
            .order_by(Instance.instance_number, Instance.pk)
        ).all()
        instances_total += len(instances)
        series.append(_series(row, list(instances), endpoint))
    identifiers: list[dict[str, Any]] = [study_identifier(study.study_instance_uid)]
    if study.accession_number:
        identifiers.append(accession_identifier(study.accession_number))
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{patient_id}"},
        "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
        "numberOfSeries": len(series),
        "numberOfInstances": instances_total,
        "series": series,
    }
    modalities = sorted({s["modality"]["code"] for s in series})
    if modalities:
        resource["modality"] = [{"system": DCM, "code": code} for code in modalities]
    started = fhir_datetime(study.study_date, study.study_time)
    if started:
        resource["started"] = started
    if study.study_description:
        resource["description"] = study.study_description
    if service_request is not None:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{service_request['id']}"}]
        if service_request.get("encounter"):
            resource["encounter"] = {"reference": service_request["encounter"]["reference"]}
    return resource


def project_study(
    session: Session, store: FhirStore, study_instance_uid: str, endpoint: str
) -> dict[str, Any] | None:
    """Create or update the ImagingStudy of a stored study; None if the study is gone."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        return None
    patient_row = session.get(Patient, study.patient_pk)
    assert patient_row is not None  # foreign key
    service_request = find_service_request(store, study.accession_number)
    dicom = Demographics(
        patient_row.patient_id,
        patient_row.issuer_of_patient_id,
        patient_row.patient_name,
        patient_row.patient_birth_date,
        patient_row.patient_sex,
    )
    candidates = [find_patient(store, patient_row.patient_id, patient_row.issuer_of_patient_id)]
    if candidates[0] is None and service_request is not None:
        candidates = [_subject(store, service_request)]
    patient, mismatch = None, None
    for candidate in candidates:
        if candidate is None:
            continue
        contradicting = matching.patient_contradictions(dicom, candidate)
        if contradicting:
            mismatch = (candidate, contradicting)
        else:
            patient = candidate
    engine = session.get_bind().engine
    if mismatch is not None:
        candidate, contradicting = mismatch
        patient = reconcile_patient(store, patient_row, unmatched=True)
        service_request = None  # the referral is the other person's
        reason = f"demographics contradict the FHIR Patient: {', '.join(contradicting)}"
        matching.flag(engine, study_instance_uid, reason, f"Patient/{candidate['id']}")
    else:
        if patient is None:
            patient = reconcile_patient(store, patient_row)
        matching.clear(engine, study_instance_uid)
    resource = imaging_study(session, study, str(patient["id"]), endpoint, service_request)
    identifier = study_identifier(study_instance_uid)
    return store.upsert_by_identifier(resource, DICOM_UID, identifier["value"])


def _subject(store: FhirStore, service_request: dict[str, Any]) -> dict[str, Any] | None:
    """The Patient a ServiceRequest is for, if it can be read."""
    patient_id = reference_id(service_request.get("subject"), "Patient")
    if not patient_id:
        return None
    try:
        return store.read("Patient", patient_id)
    except FhirError:
        return None
