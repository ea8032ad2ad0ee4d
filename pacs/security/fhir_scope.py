"""The access policy over the FHIR store: the condition a search (and a read) adds on
``fhir_resource`` so that resources outside the subject's reach are never fetched.

Directory types (:data:`pacs.security.policy.DIRECTORY_TYPES`) are not patient data: no
condition. ``Patient`` resources are restricted to the reached patients, the other types to
those whose ``patient`` search parameter points at one (the patient compartment); a type with
no ``patient`` parameter is not reached by a restricted subject.

The reached FHIR patients of an organisation: those whose identifier is the PatientID of a
DICOM series the organisation stored, of one it reads for (unless the patient's consent
withholds their record from other organisations), those in care there; minus those whose
consent refuses the organisation.
"""

from __future__ import annotations

import functools

from sqlalchemy import ColumnElement, and_, exists, false, not_, or_, select

from pacs.fhir.searchparams import SEARCH_PARAMS
from pacs.security.care import in_care
from pacs.security.consent import (
    REF,
    TOKEN,
    R,
    is_organisation,
    patients_identified_by,
    refusing,
    withholding,
)
from pacs.security.frozen import Frozen
from pacs.security.imaging import PATIENT, SERIES, STUDY
from pacs.security.policy import DIRECTORY_TYPES, NoReach, Reach, reach
from pacs.security.subject import Subject


def fhir_scope(subject: Subject, resource_type: str) -> ColumnElement[bool] | None:
    """The condition on ``fhir_resource`` rows of ``resource_type`` for ``subject``; None
    when unrestricted."""
    if resource_type in DIRECTORY_TYPES:
        return None
    try:
        found = reach(subject)
    except NoReach:
        return false()
    if found is None:
        return None
    return in_compartment(resource_type, found)


@functools.lru_cache(maxsize=4096)
def in_compartment(resource_type: str, found: Reach) -> ColumnElement[bool]:
    """Resources of ``resource_type`` in the compartment of the patients ``found`` reaches
    (built once per reach and type)."""
    if resource_type == "Patient":
        return Frozen(reached_patients(found, R.c.id))
    if "patient" not in SEARCH_PARAMS.get(resource_type, {}):
        return false()
    ref = _COMPARTMENT
    return Frozen(
        exists().where(
            ref.c.resource_pk == R.c.pk,
            ref.c.resource_type == resource_type,
            ref.c.param == "patient",
            ref.c.target_type == "Patient",
            reached_patients(found, ref.c.target_id),
        )
    )


def reached_patients(found: Reach, patient_id: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether the FHIR Patient id ``patient_id`` is one of the patients ``found`` reaches."""
    if found.patient:
        return patient_id.in_(patients_identified_by([found.patient]))
    organisation = found.organisation
    reached = [_stored_by(patient_id, [organisation])]
    if found.reads_for:
        others = _stored_by(patient_id, sorted(found.reads_for))
        reached.append(and_(others, patient_id.not_in(withholding())))
    if found.care:
        reached.append(patient_id.in_(in_care(organisation)))
    return and_(or_(*reached), patient_id.not_in(refusing(organisation)))


def _stored_by(patient_id: ColumnElement[str], organisations: list[str]) -> ColumnElement[bool]:
    """Whether a DICOM series of the FHIR Patient ``patient_id`` (by its identifier values)
    was stored by one of ``organisations``."""
    fhir, token = _STORED_PATIENT, _STORED_IDENTIFIER
    return exists().where(
        fhir.c.resource_type == "Patient",
        fhir.c.id == patient_id,
        token.c.resource_pk == fhir.c.pk,
        token.c.resource_type == "Patient",
        token.c.param == "identifier",
        PATIENT_ROW.c.patient_id == token.c.code,
        STUDY_ROW.c.patient_pk == PATIENT_ROW.c.pk,
        SERIES_ROW.c.study_pk == STUDY_ROW.c.pk,
        SERIES_ROW.c.source_organisation.in_(organisations),
    )


PATIENT_ROW = PATIENT.alias("stored_dicom_patient")
STUDY_ROW = STUDY.alias("stored_study")
SERIES_ROW = SERIES.alias("stored_series")
_STORED_PATIENT, _STORED_IDENTIFIER = R.alias("stored_patient"), TOKEN.alias("stored_identifier")
_COMPARTMENT = REF.alias("compartment")


def worklist_scope(subject: Subject) -> ColumnElement[bool] | None:
    """The ServiceRequests of a subject's Modality Worklist: those performed by its
    organisation (``performer``, as the worklist's station AE titles), of patients whose
    consent does not refuse it; None for an unrestricted subject."""
    try:
        found = reach(subject)
    except NoReach:
        return false()
    if found is None:
        return None
    if found.patient:
        return false()
    performer, patient = REF.alias("performer"), REF.alias("requested_for")
    return and_(
        R.c.pk.in_(
            select(performer.c.resource_pk)
            .where(
                performer.c.resource_type == "ServiceRequest",
                performer.c.param == "performer",
                is_organisation(performer, found.organisation),
            )
            .correlate(None)
        ),
        not_(
            exists().where(
                patient.c.resource_pk == R.c.pk,
                patient.c.resource_type == "ServiceRequest",
                patient.c.param == "patient",
                patient.c.target_id.in_(refusing(found.organisation)),
            )
        ),
    )
