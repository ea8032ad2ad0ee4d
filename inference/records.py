"""The ``ai_result`` index table: one row per analysis of one study version.

A row holds the measurements and where the SEG and SR went; the EMR link and the review UI
read it. ``store_result`` upserts on (StudyInstanceUID, study version, analysis): a re-run of
the same analysis replaces its row, and records the ``result.stored`` change in the same
transaction, so the change feed never announces a result that did not commit (or misses one
that did). A row a radiologist signed off (status ``final`` or ``cancelled``) is never
replaced: the sign-off is final for that study version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    UniqueConstraint,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from inference.errors import InferenceError
from pacs import changes
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import Base, utcnow

PRELIMINARY, FINAL, CANCELLED = "preliminary", "final", "cancelled"
STATUSES = frozenset({PRELIMINARY, FINAL, CANCELLED})


class AiResult(Base):
    """One AI result: measurements, model versions and the SEG/SR objects it stored."""

    __tablename__ = "ai_result"
    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid", "study_version", "analysis", name="uq_ai_result_version"
        ),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    analysis: Mapped[str] = mapped_column(String(64))
    source_series_instance_uid: Mapped[str] = mapped_column(String(64))
    model_versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON)
    seg_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    seg_series_instance_uid: Mapped[str] = mapped_column(String(64))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sr_series_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=PRELIMINARY)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


AI_RESULT: Table = AiResult.__table__  # type: ignore[assignment]


class ResultSignedOffError(InferenceError):
    """The result of this study version is signed off: a re-run may not replace it."""


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """What one analysis run produced, as stored in ``ai_result``."""

    study_instance_uid: str
    study_version: int
    analysis: str
    source_series_instance_uid: str
    model_versions: dict[str, str]
    measurements: dict[str, Any]
    seg_sop_instance_uid: str
    seg_series_instance_uid: str
    sr_sop_instance_uid: str
    sr_series_instance_uid: str


def store_result(engine: Engine, record: ResultRecord) -> int:
    """Insert or replace the row of ``record`` (status ``preliminary``) and emit
    ``result.stored``, in one write transaction of its own. Returns the row's pk; raises
    ``ResultSignedOffError`` if the row is signed off."""
    for _ in range(2):  # a concurrent insert of the same key turns into an update
        with writer_turn(engine), engine.execution_options(**WRITE).connect() as conn:
            pk = _upsert(conn, record)
        if pk is not None:
            return pk
    raise IntegrityError("ai_result upsert kept conflicting", None, Exception())


def _upsert(conn: Connection, record: ResultRecord) -> int | None:
    values = {
        "source_series_instance_uid": record.source_series_instance_uid,
        "model_versions": record.model_versions,
        "measurements": record.measurements,
        "seg_sop_instance_uid": record.seg_sop_instance_uid,
        "seg_series_instance_uid": record.seg_series_instance_uid,
        "sr_sop_instance_uid": record.sr_sop_instance_uid,
        "sr_series_instance_uid": record.sr_series_instance_uid,
        "status": PRELIMINARY,
        "created_at": utcnow(),
    }
    key = (
        (AI_RESULT.c.study_instance_uid == record.study_instance_uid)
        & (AI_RESULT.c.study_version == record.study_version)
        & (AI_RESULT.c.analysis == record.analysis)
    )
    try:
        with conn.begin():
            known = conn.execute(
                select(AI_RESULT.c.pk, AI_RESULT.c.status).where(key).with_for_update()
            ).first()
            pk = None if known is None else known.pk
            if known is not None and known.status != PRELIMINARY:
                raise ResultSignedOffError(
                    f"{record.analysis} of study version {record.study_version} is signed off"
                    f" ({known.status}); the signed result is kept"
                )
            if pk is not None:
                conn.execute(AI_RESULT.update().where(AI_RESULT.c.pk == pk).values(**values))
            else:
                pk = conn.scalar(
                    AI_RESULT.insert()
                    .values(
                        study_instance_uid=record.study_instance_uid,
                        study_version=record.study_version,
                        analysis=record.analysis,
                        **values,
                    )
                    .returning(AI_RESULT.c.pk)
                )
            changes.record(
                conn,
                "result.stored",
                study_instance_uid=record.study_instance_uid,
                series_instance_uid=record.sr_series_instance_uid,
                sop_instance_uid=record.sr_sop_instance_uid,
                payload={"result_pk": int(pk)},
            )
    except IntegrityError:
        return None  # another worker inserted the same key first: update it next time
    return int(pk)


def signed_off(engine: Engine, study_instance_uid: str, study_version: int, analysis: str) -> bool:
    """True when the result of ``analysis`` of this study version is signed off."""
    with engine.connect() as conn:
        status = conn.scalar(
            select(AI_RESULT.c.status).where(
                (AI_RESULT.c.study_instance_uid == study_instance_uid)
                & (AI_RESULT.c.study_version == study_version)
                & (AI_RESULT.c.analysis == analysis)
            )
        )
    return status is not None and status != PRELIMINARY


def results_of_study(conn: Connection, study_instance_uid: str) -> list[dict[str, Any]]:
    """Every result of a study, newest study version first."""
    rows = conn.execute(
        select(AI_RESULT)
        .where(AI_RESULT.c.study_instance_uid == study_instance_uid)
        .order_by(AI_RESULT.c.study_version.desc(), AI_RESULT.c.analysis)
    ).mappings()
    return [dict(row) for row in rows]
