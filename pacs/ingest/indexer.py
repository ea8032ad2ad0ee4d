"""Index writes of one instance: upsert patient/study/series, insert the instance, counters.

Runs on the caller's connection inside its write transaction. The statements every instance
runs are ``Prepared`` (compiled once, run on the DBAPI cursor); the rarer ones (a new series)
use SQLAlchemy Core directly. Inserts of patient/study/series use ``ON CONFLICT DO NOTHING`` so
that concurrent senders of one study (any number of processes or nodes) converge on one row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.errors import IdentityConflictError
from pacs.identity import Demographics, identity_conflict
from pacs.index.models import Instance, Patient, Series, Study, utcnow
from pacs.index.prepared import Prepared, db_timestamp
from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.source import Source

PATIENT: Table = Patient.__table__  # type: ignore[assignment]
STUDY: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]
INSTANCE: Table = Instance.__table__  # type: ignore[assignment]


_PATIENT_COLUMNS = (
    PATIENT.c.patient_id,
    PATIENT.c.issuer_of_patient_id,
    PATIENT.c.patient_name,
    PATIENT.c.patient_birth_date,
    PATIENT.c.patient_sex,
)
_PARENTS = SERIES.join(STUDY, STUDY.c.pk == SERIES.c.study_pk).join(
    PATIENT, PATIENT.c.pk == STUDY.c.patient_pk
)

# Statements of the per-instance hot path, built once (only their parameters vary).
_FIND_INSTANCE = Prepared(
    select(
        INSTANCE.c.pk,
        INSTANCE.c.series_pk,
        INSTANCE.c.sha256,
        INSTANCE.c.object_key,
        INSTANCE.c.size_bytes,
        SERIES.c.series_instance_uid,
        STUDY.c.study_instance_uid,
        *_PATIENT_COLUMNS,
    )
    .select_from(INSTANCE.join(_PARENTS, SERIES.c.pk == INSTANCE.c.series_pk))
    .where(INSTANCE.c.sop_instance_uid == bindparam("uid"))
)
_FIND_SERIES = Prepared(
    select(SERIES.c.pk, SERIES.c.study_pk, STUDY.c.study_instance_uid, *_PATIENT_COLUMNS)
    .select_from(_PARENTS)
    .where(SERIES.c.series_instance_uid == bindparam("uid"))
)
_INSTANCE_COLUMNS = [
    "sop_instance_uid",
    "series_pk",
    "sop_class_uid",
    "instance_number",
    "transfer_syntax_uid",
    "rows",
    "columns",
    "number_of_frames",
    "object_key",
    "size_bytes",
    "sha256",
    "source_ae_title",
    "source_host",
    "source_organisation",
    "received_at",
]
_INSERT_INSTANCE = Prepared(INSTANCE.insert(), column_keys=_INSTANCE_COLUMNS)
_BUMP_SERIES = Prepared(
    update(SERIES)
    .where(SERIES.c.pk == bindparam("b_series"))
    .values(
        number_of_series_related_instances=SERIES.c.number_of_series_related_instances
        + bindparam("b_n"),
        updated_at=bindparam("b_now"),
    )
)
_BUMP_STUDY = Prepared(
    update(STUDY)
    .where(STUDY.c.pk == bindparam("b_study"))
    .values(
        number_of_study_related_instances=STUDY.c.number_of_study_related_instances
        + bindparam("b_n"),
        size_bytes=STUDY.c.size_bytes + bindparam("b_size"),
        updated_at=bindparam("b_now"),
    )
)


class StoredInstance(NamedTuple):
    """What ingest needs to know about an already indexed instance."""

    pk: int
    series_pk: int
    sha256: str
    object_key: str
    size_bytes: int
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient: Demographics = Demographics()


class _SeriesRow(NamedTuple):
    series_pk: int
    study_pk: int
    study_instance_uid: str
    patient: Demographics


def demographics(a: InstanceAttributes) -> Demographics:
    """The patient an object describes."""
    return Demographics(
        a.patient_id, a.issuer_of_patient_id, a.patient_name, a.patient_birth_date, a.patient_sex
    )


def find_instance(conn: Connection, sop_instance_uid: str) -> StoredInstance | None:
    """The indexed instance with this SOP Instance UID, if any."""
    row = _FIND_INSTANCE.execute(conn, {"uid": sop_instance_uid}).fetchone()
    if row is None:
        return None
    pk, series_pk, sha256, key, size, series_uid, study_uid, *patient = row
    return StoredInstance(
        pk, series_pk, sha256, key, size, series_uid, study_uid, Demographics(*patient)
    )


def check_instance_identity(known: StoredInstance, a: InstanceAttributes) -> None:
    """Raise ``IdentityConflictError`` when the indexed instance ``known`` is in another
    series or study, or of another patient, than the object ``a`` with its SOP Instance UID."""
    if known.study_instance_uid != a.study_instance_uid:
        raise IdentityConflictError("SOPInstanceUID is in another study")
    if known.series_instance_uid != a.series_instance_uid:
        raise IdentityConflictError("SOPInstanceUID is in another series")
    _check_patient("SOPInstanceUID", known.patient, a)


# Short names of the attributes that differ: a reason fits a C-STORE ErrorComment (64 chars)
_WORDS = {
    "PatientID": "PatientID",
    "IssuerOfPatientID": "issuer",
    "PatientName": "name",
    "PatientBirthDate": "birth date",
    "PatientSex": "sex",
}


def _check_patient(keyword: str, known: Demographics, a: InstanceAttributes) -> None:
    if not (known.patient_id or a.patient_id):
        # no PatientID on either side: objects without one share one patient row, whose
        # demographics are the first such object's, so only the identifiers can be compared
        return
    differing = identity_conflict(known, demographics(a))
    if differing:
        words = ", ".join(_WORDS[name] for name in differing)
        raise IdentityConflictError(f"{keyword} of another patient ({words})")


def _check_series(found: _SeriesRow, a: InstanceAttributes) -> None:
    if found.study_instance_uid != a.study_instance_uid:
        raise IdentityConflictError("SeriesInstanceUID is in another study")
    _check_patient("SeriesInstanceUID", found.patient, a)


def _insert_ignore(conn: Connection, table: Table, values: dict[str, Any], key: list[str]) -> bool:
    """Insert unless the key exists; True when this call inserted the row."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    return conn.execute(statement.returning(table.c.pk)).first() is not None


def _series_row(conn: Connection, series_uid: str) -> _SeriesRow | None:
    row = _FIND_SERIES.execute(conn, {"uid": series_uid}).fetchone()
    return None if row is None else _SeriesRow(row[0], row[1], row[2], Demographics(*row[3:]))


def _ensure_series(
    conn: Connection, a: InstanceAttributes, source: Source, now: datetime
) -> tuple[int, int, bool]:
    """Return (series_pk, study_pk, new series), creating patient, study and series rows as
    needed; "new series" is True only in the one transaction that inserted the series row.

    Raises ``IdentityConflictError`` when the series, the study or the PatientID is held for
    another patient (or the series for another study): the rows checked are those committed
    or inserted in this transaction, so two senders racing to create one study with two
    patients cannot both win (the unique index makes the second wait for the first).
    """
    found = _series_row(conn, a.series_instance_uid)
    if found is not None:
        _check_series(found, a)
        return found.series_pk, found.study_pk, False
    patient_pk = _ensure_patient(conn, a, now)
    _insert_ignore(
        conn,
        STUDY,
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
    study_pk, study_patient_pk = conn.execute(
        select(STUDY.c.pk, STUDY.c.patient_pk).where(
            STUDY.c.study_instance_uid == a.study_instance_uid
        )
    ).one()
    if study_patient_pk != patient_pk:
        known = conn.execute(
            select(*_PATIENT_COLUMNS).where(PATIENT.c.pk == study_patient_pk)
        ).one()
        _check_patient("StudyInstanceUID", Demographics(*known), a)
    created = _insert_ignore(
        conn,
        SERIES,
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
    found = _series_row(conn, a.series_instance_uid)
    assert found is not None  # inserted or committed by a concurrent sender
    _check_series(found, a)  # a concurrent sender may have put it in another study
    _refresh_study_series(conn, found.study_pk)
    return found.series_pk, found.study_pk, created


def _ensure_patient(conn: Connection, a: InstanceAttributes, now: datetime) -> int:
    """The pk of the patient row of (PatientID, IssuerOfPatientID), inserted if new; raises
    ``IdentityConflictError`` when that row's demographics contradict the object's."""
    _insert_ignore(
        conn,
        PATIENT,
        {
            "patient_id": a.patient_id,
            "issuer_of_patient_id": a.issuer_of_patient_id,
            "patient_name": a.patient_name,
            "patient_birth_date": a.patient_birth_date,
            "patient_sex": a.patient_sex,
            "created_at": now,
        },
        ["patient_id", "issuer_of_patient_id"],
    )
    row = conn.execute(
        select(PATIENT.c.pk, *_PATIENT_COLUMNS).where(
            PATIENT.c.patient_id == a.patient_id,
            PATIENT.c.issuer_of_patient_id == a.issuer_of_patient_id,
        )
    ).one()
    _check_patient("PatientID", Demographics(*row[1:]), a)
    return int(row[0])


def _refresh_study_series(conn: Connection, study_pk: int) -> None:
    """Recompute NumberOfStudyRelatedSeries and ModalitiesInStudy (row-locked on PostgreSQL).

    The lock is FOR NO KEY UPDATE (SQLAlchemy's ``key_share=True``): plain FOR UPDATE conflicts
    with the FOR KEY SHARE lock that the foreign key of a concurrent transaction's new series
    holds on the study row, so two senders each adding a series to one study deadlocked.
    """
    conn.execute(select(STUDY.c.pk).where(STUDY.c.pk == study_pk).with_for_update(key_share=True))
    modalities = conn.scalars(
        select(SERIES.c.modality).where(SERIES.c.study_pk == study_pk).distinct()
    ).all()
    conn.execute(
        update(STUDY)
        .where(STUDY.c.pk == study_pk)
        .values(
            number_of_study_related_series=select(func.count(SERIES.c.pk))
            .where(SERIES.c.study_pk == study_pk)
            .scalar_subquery(),
            modalities_in_study="\\".join(sorted(m for m in modalities if m))[:256],
        )
    )


def insert_instance(
    conn: Connection, a: InstanceAttributes, key: str, size: int, sha256: str, source: Source
) -> bool:
    """Bump the study and series counters, then insert the instance row (see ``_bump``).
    Returns True when the instance created its series."""
    now = utcnow()
    series_pk, study_pk, new_series = _ensure_series(conn, a, source, now)
    _bump(conn, series_pk, study_pk, +1, size, now)
    _INSERT_INSTANCE.execute(
        conn,
        {
            "sop_instance_uid": a.sop_instance_uid,
            "series_pk": series_pk,
            "sop_class_uid": a.sop_class_uid,
            "instance_number": a.instance_number,
            "transfer_syntax_uid": a.transfer_syntax_uid,
            "rows": a.rows,
            "columns": a.columns,
            "number_of_frames": a.number_of_frames,
            "object_key": key,
            "size_bytes": size,
            "sha256": sha256,
            "source_ae_title": source.ae_title[:16],
            "source_host": source.host[:64],
            "source_organisation": source.organisation[:128],
            "received_at": db_timestamp(conn, now),
        },
    )
    return new_series


def delete_instance(conn: Connection, stored: StoredInstance) -> bool:
    """Delete an instance row (if it is still the version ``stored``) and decrement counters.

    On False the caller must roll back: the counters were already decremented.
    """
    study_pk = conn.scalar(select(SERIES.c.study_pk).where(SERIES.c.pk == stored.series_pk))
    _bump(conn, stored.series_pk, study_pk or 0, -1, -stored.size_bytes, utcnow())
    deleted = conn.execute(
        INSTANCE.delete().where(INSTANCE.c.pk == stored.pk, INSTANCE.c.sha256 == stored.sha256)
    ).rowcount
    return deleted == 1


def _bump(
    conn: Connection, series_pk: int, study_pk: int, n: int, size: int, now: datetime
) -> None:
    """Adjust the counters of a series and its study.

    Every writer takes its locks top down, study row, then series row, then the instance row
    (insert or delete), as ``_refresh_study_series`` does. Other orders deadlocked on
    PostgreSQL: a sender that had just refreshed the study against one bumping the series, and
    two senders of one SOP Instance UID (the unique index entry) against the study row.
    """
    stamp = db_timestamp(conn, now)
    _BUMP_STUDY.execute(conn, {"b_study": study_pk, "b_n": n, "b_size": size, "b_now": stamp})
    _BUMP_SERIES.execute(conn, {"b_series": series_pk, "b_n": n, "b_now": stamp})
