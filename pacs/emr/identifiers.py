"""Identifier systems, code systems and the DICOM <-> FHIR value mappings of the EMR link.

``docs/fhir.md`` documents every system named here; EMRs link to the archive through them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from pacs.fhir.values import escape_search_value

DICOM_UID = "urn:dicom:uid"
"""System of DICOM UIDs (ImagingStudy.identifier value ``urn:oid:<StudyInstanceUID>``)."""
DCM = "http://dicom.nema.org/resources/ontology/DCM"
"""DICOM Controlled Terminology (modality codes CT, MR, ...; SR concept names)."""
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
"""HL7 v2 identifier types: ``ACSN`` accession number, ``MR`` medical record number."""
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
"""HL7 v2 diagnostic service sections: ``RAD`` radiology."""
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

ACCESSION_SYSTEM = "urn:pacs:accession"
"""System of accession numbers the archive writes (ServiceRequest.identifier and
ImagingStudy.identifier with type ``ACSN``); a ServiceRequest identifier of type ``ACSN`` in
any other system is read as an accession number too."""
ISSUER_PREFIX = "urn:pacs:issuer:"
"""Patient identifier system made from a DICOM IssuerOfPatientID that is neither an OID nor a
URI: ``urn:pacs:issuer:<issuer, percent-encoded>``."""
LOCAL_PATIENT_ID = "urn:pacs:patient-id"
"""Patient identifier system for a DICOM PatientID without an issuer."""
UNMATCHED_PATIENT = "urn:pacs:unmatched-patient"
"""Patient identifier system of a Patient made from DICOM data whose PatientID belongs to a
FHIR Patient with contradicting demographics (value: the index's patient number), so that
the two are never one resource."""
AI_RESULT = "urn:pacs:ai-result"
"""System of DiagnosticReport / Observation identifiers made from an AI result:
``<StudyInstanceUID>/<study version>/<analysis>[/<measurement>]``."""
AI_DEVICE = "urn:pacs:ai-device"
"""System of Device identifiers of AI algorithms: ``<model name>@<version>``."""
ENDPOINT = "urn:pacs:endpoint"
"""System of the archive's Endpoint identifiers (value ``dicomweb``)."""
USER = "urn:pacs:user"
"""System of Practitioner identifiers made from an archive user name (review sign-off)."""
TAGS = "urn:pacs:tags"
"""meta.tag system; code ``reconcile``: a Patient created from DICOM data, to be reconciled
with the patient registry."""
RECONCILE_TAG = {
    "system": TAGS,
    "code": "reconcile",
    "display": "Created from DICOM data; reconcile with the patient registry",
}


def study_identifier(study_instance_uid: str) -> dict[str, str]:
    """The ImagingStudy identifier of a Study Instance UID."""
    return {"system": DICOM_UID, "value": f"urn:oid:{study_instance_uid}"}


def patient_system(issuer: str) -> str:
    """The Patient.identifier system of a DICOM IssuerOfPatientID."""
    issuer = issuer.strip()
    if not issuer:
        return LOCAL_PATIENT_ID
    if all(part.isdigit() for part in issuer.split(".")) and "." in issuer:
        return f"urn:oid:{issuer}"
    if ":" in issuer and " " not in issuer:
        return issuer
    return ISSUER_PREFIX + quote(issuer, safe="")


def issuer_of(identifier: dict[str, Any]) -> str:
    """The DICOM IssuerOfPatientID of a Patient.identifier (inverse of ``patient_system``;
    an ``assigner.display`` wins, since that is what a modality shows)."""
    assigner = (identifier.get("assigner") or {}).get("display")
    if assigner:
        return str(assigner)
    system = str(identifier.get("system") or "")
    if system == LOCAL_PATIENT_ID:
        return ""
    if system.startswith("urn:oid:"):
        return system.removeprefix("urn:oid:")
    if system.startswith(ISSUER_PREFIX):
        return unquote(system.removeprefix(ISSUER_PREFIX))
    return system


def has_type(identifier: dict[str, Any], code: str) -> bool:
    """Whether ``identifier.type`` is the HL7 v2-0203 ``code``."""
    codings = (identifier.get("type") or {}).get("coding") or []
    return any(c.get("system") == V2_0203 and c.get("code") == code for c in codings)


def accession_of(service_request: dict[str, Any]) -> str:
    """The accession number of a ServiceRequest: its identifier of type ACSN, or in the
    archive's accession system; empty if it has none."""
    for identifier in service_request.get("identifier") or []:
        if identifier.get("value") and (
            has_type(identifier, "ACSN") or identifier.get("system") == ACCESSION_SYSTEM
        ):
            return str(identifier["value"])
    return ""


def accession_identifier(accession: str) -> dict[str, Any]:
    """An identifier of type ACSN in the archive's accession system."""
    return {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
        "system": ACCESSION_SYSTEM,
        "value": accession,
    }


def preferred_patient_identifier(patient: dict[str, Any]) -> dict[str, Any] | None:
    """The identifier a modality should show as PatientID: the medical record number
    (type ``MR``) if there is one, else the first identifier with a value."""
    identifiers = [i for i in patient.get("identifier") or [] if i.get("value")]
    for identifier in identifiers:
        if has_type(identifier, "MR"):
            return identifier  # type: ignore[no-any-return]
    return identifiers[0] if identifiers else None


def reference_id(reference: dict[str, Any] | None, resource_type: str) -> str | None:
    """The id of a relative literal reference ``<resource_type>/<id>``, else None."""
    text = str((reference or {}).get("reference") or "")
    kind, _, rest = text.partition("/")
    if kind != resource_type or not rest:
        return None
    return rest.split("/_history/")[0]


AI_MEASUREMENT = "urn:pacs:ai-measurement"
"""Code system of the CT analysis measurements (codes = the ``ai_result.measurements`` keys)."""
CT_SEVERITY = "urn:pacs:ct-severity"
"""Code system of the CT severity grade of lung involvement, CT-0 .. CT-4 (the empirical
visual scale of Moscow's radiology guidelines for viral pneumonia)."""


def token_search_value(value: str) -> str | None:
    """``value`` as a FHIR token search value of any system (``\\ , $ |`` escaped), or None
    for an empty value."""
    return escape_search_value(value) or None
