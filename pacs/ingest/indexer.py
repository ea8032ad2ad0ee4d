"""Index writes of one instance: upsert patient/study/series, insert the instance, counters.

Runs inside the caller's write transaction. Inserts use ``ON CONFLICT DO NOTHING`` so that
concurrent senders of the same study (any number of processes or nodes) converge on one row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pacs.index.models import Instance, Patient, Series, Study, utcnow
from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.source import Source


def _insert_ignore(session: Session, table: Table, values: dict[str, Any], key: list[str]) -> None:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    )


def _series_pks(session: Session, series_uid: str) -> tuple[int, int, str] | None:
    row = session.execute(
        select(Series.pk, Series.study_pk, Series.modality).where(
            Series.series_instance_uid == series_uid
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def _ensure_series(session: Session, a: InstanceAttributes, source: Source) -> tuple[int, int]:
    """Return (series_pk, study_pk), creating patient, study and series rows as needed."""
    found = _series_pks(session, a.series_instance_uid)
    if found is not None:
        return found[0], found[1]
    _insert_ignore(
        session,
        Patient.__table__,  # type: ignore[arg-type]
        {
            "patient_id": a.patient_id,
            "issuer_of_patient_id": a.issuer_of_patient_id,
            "patient_name": a.patient_name,
            "patient_birth_date": a.patient_birth_date,
            "patient_sex": a.patient_sex,
            "created_at": utcnow(),
        },
        ["patient_id", "issuer_of_patient_id"],
    )
    patient_pk = session.scalar(
        select(Patient.pk).where(
            Patient.patient_id == a.patient_id,
            Patient.issuer_of_patient_id == a.issuer_of_patient_id,
        )
    )
    now = utcnow()
    _insert_ignore(
        session,
        Study.__table__,  # type: ignore[arg-type]
        {
            "study_instance_uid": a.study_instance_uid,
            "patient_pk": patient_pk,
            "study_date": a.study_date,
            "study_time": a.study_time,
            "accession_number": a.accession_number,
            "study_id": a.study_id,
            "study_description": a.study_description,
            "referring_physician_name": a.referring_physician_name,
            "institution_name": a.institution_name,
            "specific_character_set": a.specific_character_set,
            "created_at": now,
            "updated_at": now,
        },
        ["study_instance_uid"],
    )
    study_pk = session.scalar(
        select(Study.pk).where(Study.study_instance_uid == a.study_instance_uid)
    )
    _insert_ignore(
        session,
        Series.__table__,  # type: ignore[arg-type]
        {
            "series_instance_uid": a.series_instance_uid,
            "study_pk": study_pk,
            "modality": a.modality,
            "series_number": a.series_number,
            "series_description": a.series_description,
            "body_part_examined": a.body_part_examined,
            "series_date": a.series_date,
            "series_time": a.series_time,
            "station_name": a.station_name,
            "source_ae_title": source.ae_title[:16],
            "source_organisation": source.organisation[:128],
            "created_at": now,
            "updated_at": now,
        },
        ["series_instance_uid"],
    )
    series_pk, study_pk, modality = _series_pks(session, a.series_instance_uid)  # type: ignore[misc]
    study = session.execute(
        select(Study.modalities_in_study).where(Study.pk == study_pk).with_for_update()
    ).scalar_one()
    modalities = [m for m in study.split("\\") if m]
    if modality and modality not in modalities:
        modalities.append(modality)
    session.execute(
        update(Study)
        .where(Study.pk == study_pk)
        .values(
            number_of_study_related_series=select(func.count(Series.pk))
            .where(Series.study_pk == study_pk)
            .scalar_subquery(),
            modalities_in_study="\\".join(sorted(modalities))[:256],
        )
    )
    return series_pk, study_pk


def insert_instance(
    session: Session, a: InstanceAttributes, key: str, size: int, sha256: str, source: Source
) -> None:
    """Insert the instance row and bump the series and study counters."""
    series_pk, study_pk = _ensure_series(session, a, source)
    now = utcnow()
    session.execute(
        Instance.__table__.insert().values(  # type: ignore[attr-defined]
            sop_instance_uid=a.sop_instance_uid,
            series_pk=series_pk,
            sop_class_uid=a.sop_class_uid,
            instance_number=a.instance_number,
            transfer_syntax_uid=a.transfer_syntax_uid,
            rows=a.rows,
            columns=a.columns,
            number_of_frames=a.number_of_frames,
            object_key=key,
            size_bytes=size,
            sha256=sha256,
            source_ae_title=source.ae_title[:16],
            source_host=source.host[:64],
            source_organisation=source.organisation[:128],
            received_at=now,
        )
    )
    _bump(session, series_pk, study_pk, +1, size, now)


def delete_instance_row(session: Session, instance: Instance) -> None:
    """Remove an instance row and decrement its series and study counters."""
    series_pk = instance.series_pk
    study_pk = session.scalar(select(Series.study_pk).where(Series.pk == series_pk))
    session.delete(instance)
    session.flush()
    _bump(session, series_pk, study_pk or 0, -1, -instance.size_bytes, utcnow())


def _bump(session: Session, series_pk: int, study_pk: int, n: int, size: int, now: Any) -> None:
    session.execute(
        update(Series)
        .where(Series.pk == series_pk)
        .values(
            number_of_series_related_instances=Series.number_of_series_related_instances + n,
            updated_at=now,
        )
    )
    session.execute(
        update(Study)
        .where(Study.pk == study_pk)
        .values(
            number_of_study_related_instances=Study.number_of_study_related_instances + n,
            size_bytes=Study.size_bytes + size,
            updated_at=now,
        )
    )
