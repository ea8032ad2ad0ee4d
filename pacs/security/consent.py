"""Patient consent (FHIR Consent) as an input of the access policy.

An *active* Consent whose ``provision.type`` is ``deny`` refuses its patient's record:

- with ``provision.actor`` references to Organizations: to those organisations;
- without any actor: to every organisation outside the treating ones (organisations that
  stored the patient's studies or have the patient in care, see :mod:`pacs.security.care`).

The answers are *uncorrelated* subqueries over the FHIR store's search index (the FHIR ids of
the refusing patients, the DICOM PatientIDs that identify them) that queries embed as
``IN``/``NOT IN``: the database runs each once per statement (a hashed set), not once per
candidate row, and a Consent written or withdrawn changes every protocol's next answer.
Nested provisions are not evaluated (the top-level ``provision`` decides).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, and_, exists, false, not_, or_, select

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


def organisation_ids(organisation: str) -> Select[Any]:
    """FHIR ids of the Organizations with the identifier value or name ``organisation`` (as
    written; the name is what the AE allow-list and registry use, see
    ``pacs.worklist.items``)."""
    identifier, name, org = _ORG_IDENTIFIER, _ORG_NAME, _ORG
    by_identifier = select(identifier.c.resource_pk).where(
        identifier.c.resource_type == "Organization",
        identifier.c.param == "identifier",
        identifier.c.code == organisation,
    )
    by_name = select(name.c.resource_pk).where(
        name.c.resource_type == "Organization",
        name.c.param == "name",
        name.c.value == normalise(organisation),
        name.c.exact == organisation[:255],
    )
    return (
        select(org.c.id)
        .where(or_(org.c.pk.in_(by_identifier), org.c.pk.in_(by_name)))
        .correlate(None)
    )


def is_organisation(ref: FromClause, organisation: str) -> ColumnElement[bool]:
    """Whether a reference index row points at ``organisation``: the Organization with that
    id, identifier value or name (:func:`organisation_ids`)."""
    return and_(
        ref.c.target_type == "Organization",
        or_(ref.c.target_id == organisation, ref.c.target_id.in_(organisation_ids(organisation))),
    )


def _denying(actors: Callable[[FromClause], Any]) -> Select[Any]:
    """FHIR ids of the Patients with an active deny Consent whose actors pass ``actors`` (a
    condition on the Consent's reference index row ``patient``)."""
    patient, status, kind = _CONSENT_PATIENT, _STATUS, _KIND
    return (
        select(patient.c.target_id)
        .where(
            patient.c.resource_type == "Consent",
            patient.c.param == "patient",
            patient.c.target_type == "Patient",
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
        .correlate(None)
    )


def _actors(patient: FromClause) -> Any:
    actor = _CONSENT_ACTOR
    return exists().where(
        actor.c.resource_pk == patient.c.resource_pk,
        actor.c.resource_type == "Consent",
        actor.c.param == "actor",
    )


def refusing(organisation: str) -> Select[Any]:
    """FHIR ids of the Patients whose active consent refuses ``organisation``."""

    def naming(patient: FromClause) -> Any:
        return _actors(patient).where(is_organisation(_CONSENT_ACTOR, organisation))

    return _denying(naming)


def withholding() -> Select[Any]:
    """FHIR ids of the Patients whose active consent refuses sharing outside the treating
    organisations (a deny provision without actors)."""
    return _denying(lambda patient: not_(_actors(patient)))


def identifying(fhir_ids: Select[Any]) -> Select[Any]:
    """The identifier values (DICOM PatientIDs) of the FHIR Patients among ``fhir_ids``."""
    token, patient = _IDENTIFIER, _IDENTIFIED
    return (
        select(token.c.code)
        .where(
            token.c.resource_type == "Patient",
            token.c.param == "identifier",
            patient.c.pk == token.c.resource_pk,
            patient.c.deleted == false(),
            patient.c.id.in_(fhir_ids),
        )
        .correlate(None)
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
