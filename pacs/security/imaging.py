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

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, exists, false, not_, or_
from sqlalchemy.orm import Session

from pacs.index.models import Patient, Series, Study
from pacs.security.care import in_care
from pacs.security.consent import identifying, refusing, withholding
from pacs.security.frozen import Frozen
from pacs.security.policy import NoReach, Reach, reach
from pacs.security.resolved import consent_lists
from pacs.security.subject import Subject

PATIENT: Table = Patient.__table__  # type: ignore[assignment]
STUDY: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]
_STUDY, _SERIES = STUDY.alias("reach_study"), SERIES.alias("reach_series")


@dataclass(frozen=True, slots=True)
class ImagingScope:
    """The conditions of one subject's reach on the patient, study and series tables.

    ``patients()`` needs ``patient`` in the query, ``studies()`` ``patient`` and ``study``,
    ``series()`` all three (every query of the index joins them down to its level). The
    organisation test is a correlated ``EXISTS`` on ``series.study_pk`` (an indexed lookup
    per candidate row); the care and consent tests are uncorrelated ``IN``/``NOT IN`` over
    the PatientIDs of the patients in care or refusing, which the database computes once
    per statement (a small hashed set), whatever the number of candidates."""

    reach: Reach | None  # None: the subject reaches nothing
    refused: tuple[str, ...] | None = None  # PatientIDs refusing the organisation, if listed
    withheld: tuple[str, ...] | None = None  # PatientIDs withholding their record, if listed

    def patients(self) -> ColumnElement[bool]:
        """Condition on ``patient`` rows."""
        return _condition(self, "patients")

    def studies(self) -> ColumnElement[bool]:
        """Condition on ``study`` rows (with their patient joined)."""
        return _condition(self, "studies")

    def series(self) -> ColumnElement[bool]:
        """Condition on ``series`` rows (with their study and patient joined)."""
        return _condition(self, "series")

    def _patients(self) -> ColumnElement[bool]:
        study, series = _STUDY, _SERIES

        def stored_by(organisation: Any) -> ColumnElement[bool]:
            return exists().where(
                study.c.patient_pk == PATIENT.c.pk,
                series.c.study_pk == study.c.pk,
                organisation(series.c.source_organisation),
            )

        return self._condition(stored_by)

    def _studies(self) -> ColumnElement[bool]:
        series = _SERIES

        def stored_by(organisation: Any) -> ColumnElement[bool]:
            return exists().where(
                series.c.study_pk == STUDY.c.pk, organisation(series.c.source_organisation)
            )

        return self._condition(stored_by)

    def _series(self) -> ColumnElement[bool]:
        return self._condition(lambda organisation: organisation(SERIES.c.source_organisation))

    def _condition(self, stored_by: Any) -> ColumnElement[bool]:
        """The reach, given ``stored_by(test)``: whether the row holds a series whose
        ``source_organisation`` passes ``test``."""
        r = self.reach
        if r is None:
            return false()
        patient_id = PATIENT.c.patient_id
        if r.patient:
            return patient_id == r.patient
        organisation = r.organisation
        reached = [stored_by(lambda column: column == organisation)]
        if r.care:
            reached.append(patient_id.in_(identifying(in_care(organisation))))
        if r.reads_for:
            others = sorted(r.reads_for)
            reached.append(
                and_(
                    stored_by(lambda column: column.in_(others)),
                    patient_id.not_in(_listed(self.withheld, withholding)),
                )
            )
        refused = patient_id.in_(_listed(self.refused, lambda: refusing(organisation)))
        return and_(or_(*reached), not_(refused))


def _listed(values: tuple[str, ...] | None, fhir_ids: Any) -> Any:
    """``values`` when resolved for the request, else the subquery of the PatientIDs of the
    FHIR Patients ``fhir_ids()`` names."""
    return identifying(fhir_ids()) if values is None else values


@functools.lru_cache(maxsize=4096)
def _condition(scope: ImagingScope, level: str) -> ColumnElement[bool]:
    """The conditions of a reach, built once (building them costs more than running them)."""
    built: ColumnElement[bool] = getattr(scope, f"_{level}")()
    return Frozen(built)


def imaging_scope(subject: Subject, session: Session | None = None) -> ImagingScope | None:
    """The subject's conditions on the DICOM index; None when it reaches every patient. With
    ``session``, the consent refusals are resolved now (:mod:`pacs.security.resolved`) and
    the conditions carry them as lists, not subqueries: call it once per request."""
    try:
        found = reach(subject)
    except NoReach:
        return ImagingScope(None)
    if found is None:
        return None
    if session is None or found.patient:
        return ImagingScope(found)
    refused, withheld = consent_lists(session, found.organisation)
    return ImagingScope(found, refused, withheld)


def study_scope(subject: Subject) -> ColumnElement[bool] | None:
    """The condition on ``study`` (patient joined) for ``subject``; None = unrestricted."""
    scope = imaging_scope(subject)
    return None if scope is None else scope.studies()
