"""Care relationships: the patients in care at an organisation, from the FHIR store.

A patient is in care at an organisation when an Encounter names it as service provider, a
ServiceRequest (referral) as requester or performer, or an Appointment as a participant —
each by an ``Organization`` reference (id, or identifier value, see
:func:`pacs.security.consent.is_organisation`). A clinician reaches these patients.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, exists, or_

from pacs.security.consent import REF, is_organisation

CARE_REFERENCES = (
    ("Encounter", "service-provider"),
    ("ServiceRequest", "requester"),
    ("ServiceRequest", "performer"),
    ("Appointment", "actor"),
)
"""(resource type, reference search parameter) that put a patient in an organisation's care."""
_PATIENT, _PROVIDER = REF.alias("care_patient"), REF.alias("care_provider")


def in_care(patient_id: ColumnElement[str], organisation: str) -> ColumnElement[bool]:
    """Whether the FHIR Patient ``patient_id`` is in care at ``organisation``."""
    patient, provider = _PATIENT, _PROVIDER
    kinds = [and_(provider.c.resource_type == t, provider.c.param == p) for t, p in CARE_REFERENCES]
    return exists().where(
        patient.c.target_type == "Patient",
        patient.c.target_id == patient_id,
        patient.c.resource_type.in_(sorted({t for t, _ in CARE_REFERENCES})),
        patient.c.param == "patient",
        provider.c.resource_pk == patient.c.resource_pk,
        or_(*kinds),
        is_organisation(provider, organisation),
    )
