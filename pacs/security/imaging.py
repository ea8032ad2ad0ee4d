"""The access policy over the DICOM index: SQL conditions that C-FIND, QIDO-RS, WADO-RS,
C-GET, C-MOVE and ``/api/studies`` add to their queries, so that rows outside the subject's
:class:`~pacs.security.policy.Reach` are never fetched.

The organisation of DICOM data is ``series.source_organisation``: the sending organisation,
set at ingest from the calling AE's allow-list entry or the STOW-RS caller's organisation.
A series is visible when (consent of the patient not refusing the subject's organisation)

- it was stored by the subject's organisation, or
- its patient is in care at the subject's organisation (clinicians), or
- it was stored by an organisation the subject reads for (radiologists), unless the
  patient refuses sharing outside the treating organisations;

a study (a patient) when one of its series is, or its patient is in care. A patient subject
sees their own studies (PatientID = ``Subject.patient``), consent aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, false, not_, or_, select

from pacs.index.models import Patient, Series, Study
from pacs.security.care import in_care
from pacs.security.consent import identifiers_of, refusing, withholding
from pacs.security.policy import NoReach, Reach, reach
from pacs.security.subject import Subject

PATIENT: Table = Patient.__table__  # type: ignore[assignment]
STUDY: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ImagingScope:
    """The conditions of one subject's reach on the patient, study and series tables.

    ``patients()`` needs ``patient`` in the query, ``studies()`` ``patient`` and ``study``,
    ``series()`` all three (every query of the index joins them down to its level)."""

    reach: Reach | None  # None: the subject reaches nothing

    def patients(self) -> ColumnElement[bool]:
        """Condition on ``patient`` rows."""
        return self._condition(PATIENT.c.pk, _patients_with)

    def studies(self) -> ColumnElement[bool]:
        """Condition on ``study`` rows (with their patient joined)."""
        return self._condition(STUDY.c.pk, _studies_with)

    def series(self) -> ColumnElement[bool]:
        """Condition on ``series`` rows (with their study and patient joined)."""
        r = self.reach
        if r is None:
            return false()
        if r.patient:
            return PATIENT.c.patient_id == r.patient
        organisation = SERIES.c.source_organisation
        return self._combine(
            organisation == r.organisation,
            organisation.in_(sorted(r.reads_for)) if r.reads_for else None,
        )

    def _condition(self, key: Any, holding: Any) -> ColumnElement[bool]:
        r = self.reach
        if r is None:
            return false()
        if r.patient:
            return PATIENT.c.patient_id == r.patient
        own = key.in_(holding(SERIES.c.source_organisation == r.organisation))
        others = None
        if r.reads_for:
            others = key.in_(holding(SERIES.c.source_organisation.in_(sorted(r.reads_for))))
        return self._combine(own, others)

    def _combine(
        self, own: ColumnElement[bool], others: ColumnElement[bool] | None
    ) -> ColumnElement[bool]:
        r = self.reach
        assert r is not None
        patient_id = PATIENT.c.patient_id
        reached = [own]
        if r.care:
            reached.append(patient_id.in_(identifiers_of(in_care(r.organisation))))
        if others is not None:
            reached.append(and_(others, not_(patient_id.in_(identifiers_of(withholding())))))
        refused = patient_id.in_(identifiers_of(refusing(r.organisation)))
        return and_(not_(refused), or_(*reached))


def _studies_with(series_condition: ColumnElement[bool]) -> Select[Any]:
    return select(SERIES.c.study_pk).where(series_condition).correlate(None)


def _patients_with(series_condition: ColumnElement[bool]) -> Select[Any]:
    return (
        select(STUDY.c.patient_pk)
        .join(SERIES, SERIES.c.study_pk == STUDY.c.pk)
        .where(series_condition)
        .correlate(None)
    )


def imaging_scope(subject: Subject) -> ImagingScope | None:
    """The subject's conditions on the DICOM index; None when it reaches every patient."""
    try:
        found = reach(subject)
    except NoReach:
        return ImagingScope(None)
    return None if found is None else ImagingScope(found)


def study_scope(subject: Subject) -> ColumnElement[bool] | None:
    """The condition on ``study`` (patient joined) for ``subject``; None = unrestricted."""
    scope = imaging_scope(subject)
    return None if scope is None else scope.studies()


def stored_by(organisations: list[str]) -> Select[Any]:
    """PatientIDs of the DICOM patients with a series stored by one of ``organisations``."""
    return (
        select(PATIENT.c.patient_id)
        .join(STUDY, STUDY.c.patient_pk == PATIENT.c.pk)
        .join(SERIES, SERIES.c.study_pk == STUDY.c.pk)
        .where(SERIES.c.source_organisation.in_(organisations))
        .correlate(None)
    )
