"""``/api/studies``: what the archive holds, paged, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from pacs.emr.matching import reconciliation_of
from pacs.query import catalog
from pacs.security.imaging import imaging_scope
from viewer_api.deps import AuditDep, SessionDep, SubjectDep

router = APIRouter(prefix="/api/studies", tags=["studies"])


class StudySummary(catalog.StudyRow):
    """One study as listed."""


class StudyPage(BaseModel):
    """A page of studies."""

    total: int
    offset: int
    limit: int
    items: list[StudySummary]


class SeriesSummary(catalog.SeriesRow):
    """One series of a study."""


class Reconciliation(BaseModel):
    """Why the EMR link did not attach the study to the FHIR Patient its PatientID found."""

    reason: str
    candidate: str  # "Patient/<id>" it was not linked to
    flagged_at: datetime


class StudyDetail(StudySummary):
    """A study with its series; ``reconciliation`` when it awaits patient reconciliation."""

    series: list[SeriesSummary]
    reconciliation: Reconciliation | None = None


@router.get("")
def list_studies(
    session: SessionDep,
    audit: AuditDep,
    subject: SubjectDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StudyPage:
    """Stored studies the caller reaches, most recently updated first (stable order:
    updated_at, pk)."""
    page = catalog.recent_studies(session, limit, offset, imaging_scope(subject, session))
    audit("search")
    items = [StudySummary.model_validate(row, from_attributes=True) for row in page.rows]
    return StudyPage(total=page.total, offset=offset, limit=limit, items=items)


@router.get("/{study_instance_uid}")
def get_study(
    study_instance_uid: str, session: SessionDep, audit: AuditDep, subject: SubjectDep
) -> StudyDetail:
    """One study with its series (404 when not stored or not within the caller's reach)."""
    scope = imaging_scope(subject, session)
    study = catalog.find_study(session, study_instance_uid, scope)
    if study is None:
        audit("read", 404, study=study_instance_uid)
        raise HTTPException(404, f"study {study_instance_uid} not found")
    series = catalog.series_of(session, study_instance_uid, scope)
    reconciliation = reconciliation_of(session, study_instance_uid)
    audit("read", patient=study.patient_id, study=study_instance_uid)
    return StudyDetail.model_validate(
        {
            **study.model_dump(),
            "reconciliation": reconciliation,
            "series": [SeriesSummary.model_validate(s, from_attributes=True) for s in series],
        }
    )
