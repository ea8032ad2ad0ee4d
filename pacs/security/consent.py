"""Patient consent (FHIR Consent) as an input of the access policy.

An *active* Consent whose ``provision.type`` is ``deny`` refuses its patient's record:

- with ``provision.actor`` references to Organizations: to those organisations;
- without any actor: to every organisation outside the treating ones (organisations that
  stored the patient's studies or have the patient in care, see :mod:`pacs.security.care`).

The answers are SQL conditions (correlated ``EXISTS`` over the FHIR store's search index, one
indexed lookup per candidate row) that queries embed: a Consent written or withdrawn changes
every protocol's next answer. Nested provisions are not evaluated (the top-level
``provision`` decides).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, FromClause, and_, exists, false, not_, or_, select

from pacs.fhir.schema import FhirReference, FhirResource, FhirString, FhirToken
from pacs.fhir.values import normalise

R = FhirResource.__table__
REF = FhirReference.__table__
TOKEN = FhirToken.__table__
STRING = FhirString.__table__

# the aliases every condition uses, built once (an alias's column collection is costly)
_ORG_IDENTIFIER, _ORG = TOKEN.alias("organisation_identifier"), R.alias("organisation")
_ORG_NAME = STRING.alias("organisation_name")
_CONSENT_PATIENT, _CONSENT_ACTOR = REF.alias("consent_patient"), REF.alias("consent_actor")
_STATUS, _KIND = TOKEN.alias("consent_status"), TOKEN.alias("consent_kind")
_IDENTIFIER, _IDENTIFIED = TOKEN.alias("patient_identifier"), R.alias("identified_patient")


def is_organisation(ref: FromClause, organisation: str) -> ColumnElement[bool]:
    """Whether a reference index row points at ``organisation``: the Organization with that
    id, identifier value or name (as written; the name is what the AE allow-list and registry
    use, see ``pacs.worklist.items``)."""
    identifier, name, org = _ORG_IDENTIFIER, _ORG_NAME, _ORG
    by_identifier = exists().where(
        identifier.c.resource_type == "Organization",
        identifier.c.param == "identifier",
        identifier.c.code == organisation,
        org.c.pk == identifier.c.resource_pk,
        org.c.id == ref.c.target_id,
    )
    by_name = exists().where(
        name.c.resource_type == "Organization",
        name.c.param == "name",
        name.c.value == normalise(organisation),
        name.c.exact == organisation[:255],
        org.c.pk == name.c.resource_pk,
        org.c.id == ref.c.target_id,
    )
    return and_(
        ref.c.target_type == "Organization",
        or_(ref.c.target_id == organisation, by_identifier, by_name),
    )


def _denial(patient_id: ColumnElement[str], actors: Callable[[FromClause], Any]) -> Any:
    """EXISTS an active deny Consent of the FHIR Patient ``patient_id`` whose actors pass
    ``actors`` (a condition on the Consent's reference index row ``patient``)."""
    patient, status, kind = _CONSENT_PATIENT, _STATUS, _KIND
    return exists().where(
        patient.c.target_type == "Patient",
        patient.c.target_id == patient_id,
        patient.c.resource_type == "Consent",
        patient.c.param == "patient",
        status.c.resource_pk == patient.c.resource_pk,
        status.c.resource_type == "Consent",
        status.c.param == "status",
        status.c.code == "active",
        kind.c.resource_pk == patient.c.resource_pk,
        kind.c.resource_type == "Consent",
        kind.c.param == "provision-type",
        kind.c.code == "deny",
        actors(patient),
    )


def refuses(patient_id: ColumnElement[str], organisation: str) -> ColumnElement[bool]:
    """Whether the active consent of FHIR Patient ``patient_id`` refuses ``organisation``."""

    def naming(patient: FromClause) -> Any:
        actor = _CONSENT_ACTOR
        return exists().where(
            actor.c.resource_pk == patient.c.resource_pk,
            actor.c.resource_type == "Consent",
            actor.c.param == "actor",
            is_organisation(actor, organisation),
        )

    return _denial(patient_id, naming)  # type: ignore[no-any-return]


def withholds(patient_id: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether the active consent of FHIR Patient ``patient_id`` refuses sharing outside the
    treating organisations (a deny provision without actors)."""

    def without_actors(patient: FromClause) -> Any:
        actor = _CONSENT_ACTOR
        return not_(
            exists().where(
                actor.c.resource_pk == patient.c.resource_pk,
                actor.c.resource_type == "Consent",
                actor.c.param == "actor",
            )
        )

    return _denial(patient_id, without_actors)  # type: ignore[no-any-return]


def identified(
    identifier: ColumnElement[str], condition: Callable[[ColumnElement[str]], Any]
) -> ColumnElement[bool]:
    """Whether a FHIR Patient with the identifier value ``identifier`` (a DICOM PatientID)
    satisfies ``condition`` (a condition on its FHIR id)."""
    token, patient = _IDENTIFIER, _IDENTIFIED
    return exists().where(
        token.c.resource_type == "Patient",
        token.c.param == "identifier",
        token.c.code == identifier,
        patient.c.pk == token.c.resource_pk,
        patient.c.deleted == false(),
        condition(patient.c.id),
    )


def patients_identified_by(values: list[str]) -> Any:
    """FHIR ids of the Patients with one of these identifier values (DICOM PatientIDs)."""
    token = _IDENTIFIER
    return (
        select(R.c.id)
        .join(token, token.c.resource_pk == R.c.pk)
        .where(
            R.c.resource_type == "Patient",
            R.c.deleted == false(),
            token.c.resource_type == "Patient",
            token.c.param == "identifier",
            token.c.code.in_(values),
        )
        .correlate(None)
    )
