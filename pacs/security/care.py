"""Care relationships: the patients in care at an organisation, from the FHIR store.

A patient is in care at an organisation when an Encounter names it as service provider, a
ServiceRequest (referral) as requester or performer, or an Appointment as a participant —
each by an ``Organization`` reference (id, or identifier value, see
:func:`pacs.security.consent.is_organisation`). A clinician reaches these patients.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, or_, select

from pacs.security.consent import REF, is_organisation

CARE_REFERENCES = (
    ("Encounter", "service-provider"),
    ("ServiceRequest", "requester"),
    ("ServiceRequest", "performer"),
    ("Appointment", "actor"),
)
"""(resource type, reference search parameter) that put a patient in an organisation's care."""
_PATIENT, _PROVIDER = REF.alias("care_patient"), REF.alias("care_provider")


def in_care(organisation: str) -> Select[Any]:
    """FHIR ids of the Patients in care at ``organisation`` (an uncorrelated subquery the
    database runs once per statement)."""
    patient, provider = _PATIENT, _PROVIDER
    kinds = [and_(provider.c.resource_type == t, provider.c.param == p) for t, p in CARE_REFERENCES]
    return (
        select(patient.c.target_id)
        .where(
            patient.c.target_type == "Patient",
            patient.c.resource_type.in_(sorted({t for t, _ in CARE_REFERENCES})),
            patient.c.param == "patient",
            provider.c.resource_pk == patient.c.resource_pk,
            or_(*kinds),
            is_organisation(provider, organisation),
        )
        .correlate(None)
    )
