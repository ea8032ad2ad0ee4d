"""Patient consent (FHIR Consent) as an input of the access policy.

An *active* Consent whose ``provision.type`` is ``deny`` refuses its patient's record:

- with ``provision.actor`` references to Organizations: to those organisations;
- without any actor: to every organisation outside the treating ones (organisations that
  stored the patient's studies or have the patient in care, see :mod:`pacs.security.care`).

The answers are SQL selects of FHIR Patient ids over the FHIR store's search index, which
queries embed: a Consent written (or withdrawn) changes every protocol's next answer.
Nested provisions are not evaluated (the top-level ``provision`` decides).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, and_, false, or_, select

from pacs.fhir.schema import FhirReference, FhirResource, FhirToken

R = FhirResource.__table__
REF = FhirReference.__table__
TOKEN = FhirToken.__table__


def organisation_ids(organisation: str) -> Select[Any]:
    """FHIR ids of the Organizations with the identifier value ``organisation``."""
    named = TOKEN.alias("organisation_identifier")
    by_identifier = (
        select(R.c.id)
        .join(named, named.c.resource_pk == R.c.pk)
        .where(
            named.c.resource_type == "Organization",
            named.c.param == "identifier",
            named.c.code == organisation,
            R.c.deleted == false(),
        )
    )
    return by_identifier.correlate(None)


def is_organisation(ref: FromClause, organisation: str) -> ColumnElement[bool]:
    """Whether a reference index row points at ``organisation``: the Organization with that
    id or with that identifier value (the subject's organisation as its token names it)."""
    target = ref.c.target_id
    return and_(
        ref.c.target_type == "Organization",
        or_(target == organisation, target.in_(organisation_ids(organisation))),
    )


def _denials(patient: FromClause) -> Select[Any]:
    """Patient references of active deny Consents (``patient``: their reference index rows),
    joined to their status and provision type."""
    status, kind = TOKEN.alias("consent_status"), TOKEN.alias("consent_kind")
    return (
        select(patient.c.target_id)
        .join(status, status.c.resource_pk == patient.c.resource_pk)
        .join(kind, kind.c.resource_pk == patient.c.resource_pk)
        .where(
            patient.c.resource_type == "Consent",
            patient.c.param == "patient",
            status.c.resource_type == "Consent",
            status.c.param == "status",
            status.c.code == "active",
            kind.c.resource_type == "Consent",
            kind.c.param == "provision-type",
            kind.c.code == "deny",
        )
        .correlate(None)
    )


def refusing(organisation: str) -> Select[Any]:
    """FHIR ids of the patients whose active consent refuses ``organisation``."""
    patient, actor = REF.alias("consent_patient"), REF.alias("consent_actor")
    return (
        _denials(patient)
        .join(actor, actor.c.resource_pk == patient.c.resource_pk)
        .where(
            actor.c.resource_type == "Consent",
            actor.c.param == "actor",
            is_organisation(actor, organisation),
        )
    )


def withholding() -> Select[Any]:
    """FHIR ids of the patients whose active consent refuses sharing outside the treating
    organisations (a deny provision without actors)."""
    patient, actor = REF.alias("consent_patient"), REF.alias("consent_actor")
    return _denials(patient).where(
        patient.c.resource_pk.not_in(
            select(actor.c.resource_pk).where(
                actor.c.resource_type == "Consent", actor.c.param == "actor"
            )
        )
    )


def identifiers_of(patient_ids: Select[Any]) -> Select[Any]:
    """The identifier values (DICOM PatientID) of the FHIR Patients ``patient_ids`` selects."""
    identifier = TOKEN.alias("patient_identifier")
    return (
        select(identifier.c.code)
        .join(R, R.c.pk == identifier.c.resource_pk)
        .where(
            identifier.c.resource_type == "Patient",
            identifier.c.param == "identifier",
            R.c.resource_type == "Patient",
            R.c.id.in_(patient_ids),
        )
        .correlate(None)
    )


def patients_identified_by(values: Select[Any] | list[str]) -> Select[Any]:
    """FHIR ids of the Patients with one of these identifier values (DICOM PatientIDs)."""
    identifier = TOKEN.alias("patient_identifier")
    return (
        select(R.c.id)
        .join(identifier, identifier.c.resource_pk == R.c.pk)
        .where(
            R.c.resource_type == "Patient",
            R.c.deleted == false(),
            identifier.c.resource_type == "Patient",
            identifier.c.param == "identifier",
            identifier.c.code.in_(values),
        )
        .correlate(None)
    )
