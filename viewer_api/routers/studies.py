"""``/api/studies``: what the archive holds, paged, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from pacs.emr.matching import reconciliation_of
from pacs.index.models import Patient, Series, Study, as_utc
from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, SessionDep

router = APIRouter(prefix="/api/studies", tags=["studies"])


class StudySummary(BaseModel):
    """One study as listed."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modalities_in_study: list[str]
    number_of_series: int
    number_of_instances: int
    size_bytes: int
    updated_at: datetime


class StudyPage(BaseModel):
    """A page of studies."""

    total: int
    offset: int
    limit: int
    items: list[StudySummary]


class SeriesSummary(BaseModel):
    """One series of a study."""

    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    number_of_instances: int
    source_ae_title: str
    source_organisation: str


class Reconciliation(BaseModel):
    """Why the EMR link did not attach the study to the FHIR Patient its PatientID found."""

    reason: str
    candidate: str  # "Patient/<id>" it was not linked to
    flagged_at: datetime


class StudyDetail(StudySummary):
    """A study with its series; ``reconciliation`` when it awaits patient reconciliation."""

    series: list[SeriesSummary]
    reconciliation: Reconciliation | None = None


def _summary(study: Study, patient: Patient) -> dict[str, object]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer_of_patient_id,
        "patient_name": patient.patient_name,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "accession_number": study.accession_number,
        "study_description": study.study_description,
        "modalities_in_study": [m for m in study.modalities_in_study.split("\\") if m],
        "number_of_series": study.number_of_study_related_series,
        "number_of_instances": study.number_of_study_related_instances,
        "size_bytes": study.size_bytes,
        "updated_at": as_utc(study.updated_at),
    }


def recent_studies(
    session: Session, limit: int, offset: int = 0
) -> tuple[int, Sequence[Row[Study, Patient]]]:
    """(number of studies, a page of (study, patient)), newest first; ties broken by pk."""
    total = session.scalar(select(func.count(Study.pk))) or 0
    rows = session.execute(
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.pk)
        .order_by(Study.updated_at.desc(), Study.pk.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return total, rows


@router.get("")
def list_studies(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StudyPage:
    """Stored studies, most recently updated first (stable order: updated_at, pk)."""
    total, rows = recent_studies(session, limit, offset)
    record_access(session, request, user, "search")
    items = [StudySummary.model_validate(_summary(s, p)) for s, p in rows]
    return StudyPage(total=total, offset=offset, limit=limit, items=items)


@router.get("/{study_instance_uid}")
def get_study(
    study_instance_uid: str, request: Request, session: SessionDep, user: CurrentUser
) -> StudyDetail:
    """One study with its series."""
    row = session.execute(
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if row is None:
        record_access(session, request, user, "read", 404)
        raise HTTPException(404, f"study {study_instance_uid} not found")
    study, patient = row
    series = session.scalars(
        select(Series).where(Series.study_pk == study.pk).order_by(Series.series_number, Series.pk)
    ).all()
    reconciliation = reconciliation_of(session, study_instance_uid)
    record_access(session, request, user, "read")
    return StudyDetail.model_validate(
        {
            **_summary(study, patient),
            "reconciliation": reconciliation,
            "series": [
                SeriesSummary(
                    series_instance_uid=s.series_instance_uid,
                    modality=s.modality,
                    series_number=s.series_number,
                    series_description=s.series_description,
                    body_part_examined=s.body_part_examined,
                    number_of_instances=s.number_of_series_related_instances,
                    source_ae_title=s.source_ae_title,
                    source_organisation=s.source_organisation,
                )
                for s in series
            ],
        }
    )
