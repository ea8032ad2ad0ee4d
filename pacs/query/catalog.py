"""What the archive holds, for listings: studies newest first, one study with its series, and
whether the study / series a DICOMweb path names is stored. Read-only; typed rows, no ORM
objects leave this module. The rows are pydantic models so that ``/api/studies`` answers them
as they are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pacs.index.models import Patient, Series, Study, as_utc

if TYPE_CHECKING:
    from pacs.security.imaging import ImagingScope


class StudyRow(BaseModel):
    """One study and its patient, as listed."""

    model_config = ConfigDict(frozen=True)

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


class SeriesRow(BaseModel):
    """One series of a study."""

    model_config = ConfigDict(frozen=True)

    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    number_of_instances: int
    source_ae_title: str
    source_organisation: str


@dataclass(frozen=True, slots=True)
class StudyPage:
    """The number of stored studies and one page of them."""

    total: int
    rows: list[StudyRow]


def _study_row(study: Study, patient: Patient) -> StudyRow:
    return StudyRow(
        study_instance_uid=study.study_instance_uid,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        patient_name=patient.patient_name,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_description=study.study_description,
        modalities_in_study=[m for m in study.modalities_in_study.split("\\") if m],
        number_of_series=study.number_of_study_related_series,
        number_of_instances=study.number_of_study_related_instances,
        size_bytes=study.size_bytes,
        updated_at=as_utc(study.updated_at),
    )


def _series_row(series: Series) -> SeriesRow:
    return SeriesRow(
        series_instance_uid=series.series_instance_uid,
        modality=series.modality,
        series_number=series.series_number,
        series_description=series.series_description,
        body_part_examined=series.body_part_examined,
        number_of_instances=series.number_of_series_related_instances,
        source_ae_title=series.source_ae_title,
        source_organisation=series.source_organisation,
    )


def recent_studies(
    session: Session, limit: int, offset: int = 0, scope: ImagingScope | None = None
) -> StudyPage:
    """A page of the studies within ``scope`` (None: all), most recently updated first; ties
    broken by pk (a stable order)."""
    counted = select(func.count(Study.pk)).join(Patient, Study.patient_pk == Patient.pk)
    listed = select(Study, Patient).join(Patient, Study.patient_pk == Patient.pk)
    if scope is not None:
        counted, listed = counted.where(scope.studies()), listed.where(scope.studies())
    total = session.scalar(counted) or 0
    rows = session.execute(
        listed.order_by(Study.updated_at.desc(), Study.pk.desc()).limit(limit).offset(offset)
    ).all()
    return StudyPage(total, [_study_row(study, patient) for study, patient in rows])


def find_study(
    session: Session, study_instance_uid: str, scope: ImagingScope | None = None
) -> StudyRow | None:
    """The study with this UID within ``scope``, or None."""
    query = (
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.study_instance_uid == study_instance_uid)
    )
    if scope is not None:
        query = query.where(scope.studies())
    row = session.execute(query).first()
    return None if row is None else _study_row(*row)


def series_of(
    session: Session, study_instance_uid: str, scope: ImagingScope | None = None
) -> list[SeriesRow]:
    """The series of a study within ``scope``, by series number (then pk)."""
    query = (
        select(Series)
        .join(Study, Series.study_pk == Study.pk)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.study_instance_uid == study_instance_uid)
    )
    if scope is not None:
        query = query.where(scope.series())
    series = session.scalars(query.order_by(Series.series_number, Series.pk)).all()
    return [_series_row(s) for s in series]


def missing_level(
    session: Session,
    study: str | None,
    series: str | None = None,
    scope: ImagingScope | None = None,
) -> str | None:
    """``"study"`` when ``study`` is not stored (or outside ``scope``), ``"series"`` when
    ``series`` is not a stored series of it (or outside ``scope``), else None (also when no
    study is named)."""
    if study is None:
        return None
    studies = (
        select(Study.pk)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.study_instance_uid == study)
    )
    if scope is not None:
        studies = studies.where(scope.studies())
    study_pk = session.scalar(studies)
    if study_pk is None:
        return "study"
    if series is None:
        return None
    in_study = (
        select(Series.pk)
        .join(Study, Series.study_pk == Study.pk)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Series.series_instance_uid == series, Series.study_pk == study_pk)
    )
    if scope is not None:
        in_study = in_study.where(scope.series())
    return "series" if session.scalar(in_study) is None else None
