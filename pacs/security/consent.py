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


def is_organisation(ref: FromClause, organisation: str) -> ColumnElement[bool]:
    """Whether a reference index row points at ``organisation``: the Organization with that
    id, or one with that identifier value (the subject's organisation as its token names it)."""
    named = (
        select(R.c.id)
        .where(
            R.c.resource_type == "Organization",
            R.c.deleted == false(),
            R.c.pk.in_(
                select(TOKEN.c.resource_pk).where(
                    TOKEN.c.resource_type == "Organization",
                    TOKEN.c.param == "identifier",
                    TOKEN.c.code == organisation,
                )
            ),
        )
        .correlate(None)
    )
    return and_(
        ref.c.target_type == "Organization",
        or_(ref.c.target_id == organisation, ref.c.target_id.in_(named)),
    )


def _active_denials() -> Select[Any]:
    status, kind = TOKEN.alias("consent_status"), TOKEN.alias("consent_kind")
    return (
        select(status.c.resource_pk)
        .join(kind, kind.c.resource_pk == status.c.resource_pk)
        .where(
            status.c.resource_type == "Consent",
            status.c.param == "status",
            status.c.code == "active",
            kind.c.resource_type == "Consent",
            kind.c.param == "provision-type",
            kind.c.code == "deny",
        )
        .correlate(None)
    )


def _actors() -> FromClause:
    return REF.alias("consent_actor")


def refusing(organisation: str) -> Select[Any]:
    """FHIR ids of the patients whose active consent refuses ``organisation``."""
    patient, actor = REF.alias("consent_patient"), _actors()
    return (
        select(patient.c.target_id)
        .where(
            patient.c.resource_type == "Consent",
            patient.c.param == "patient",
            patient.c.resource_pk.in_(_active_denials()),
            patient.c.resource_pk.in_(
                select(actor.c.resource_pk).where(
                    actor.c.resource_type == "Consent",
                    actor.c.param == "actor",
                    is_organisation(actor, organisation),
                )
            ),
        )
        .correlate(None)
    )


def withholding() -> Select[Any]:
    """FHIR ids of the patients whose active consent refuses sharing outside the treating
    organisations (a deny provision without actors)."""
    patient, actor = REF.alias("consent_patient"), _actors()
    return (
        select(patient.c.target_id)
        .where(
            patient.c.resource_type == "Consent",
            patient.c.param == "patient",
            patient.c.resource_pk.in_(_active_denials()),
            patient.c.resource_pk.not_in(
                select(actor.c.resource_pk).where(
                    actor.c.resource_type == "Consent", actor.c.param == "actor"
                )
            ),
        )
        .correlate(None)
    )


def identifiers_of(patient_ids: Select[Any]) -> Select[Any]:
    """The identifier values (DICOM PatientID) of the FHIR Patients ``patient_ids`` selects."""
    return (
        select(TOKEN.c.code)
        .where(
            TOKEN.c.resource_type == "Patient",
            TOKEN.c.param == "identifier",
            TOKEN.c.resource_pk.in_(
                select(R.c.pk).where(R.c.resource_type == "Patient", R.c.id.in_(patient_ids))
            ),
        )
        .correlate(None)
    )


def patients_identified_by(values: Select[Any] | list[str]) -> Select[Any]:
    """FHIR ids of the Patients with one of these identifier values (DICOM PatientIDs)."""
    target = TOKEN.alias("patient_identifier")
    return (
        select(R.c.id)
        .where(
            R.c.resource_type == "Patient",
            R.c.deleted == false(),
            R.c.pk.in_(
                select(target.c.resource_pk).where(
                    target.c.resource_type == "Patient",
                    target.c.param == "identifier",
                    target.c.code.in_(values),
                )
            ),
        )
        .correlate(None)
    )
