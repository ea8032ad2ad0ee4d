"""The change feed: an append-only, ordered log of what happened in the archive.

``record`` appends an event inside the caller's transaction, so an event exists exactly when
the change it describes committed. ``read_since`` returns the events after a sequence number,
oldest first; a reader that remembers the last ``seq`` it saw never misses or repeats one.

Ordering. On SQLite writers are serialised, so ``seq`` is assigned at insert (the next
number). On PostgreSQL concurrent transactions commit in any order, so a sequence value taken
at insert would let a reader skip an event whose transaction commits after a later one: the
row is inserted with ``seq`` NULL and ``publish`` numbers committed rows in insert order under
an advisory lock, one publisher at a time. Every published ``seq`` is then final and all
smaller ones are visible. ``read_since`` publishes before it reads, and every process that
runs the study sweeper publishes on each tick.

``on_ingest`` subscribes the feed to ingest's events (``pacs.ingest.events``): every stored
instance and added series is announced, whether the study lifecycle runs or not.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, as_utc, utcnow
from pacs.index.prepared import Prepared, db_timestamp
from pacs.ingest.events import IngestEvent, SeriesAdded

KINDS = frozenset(
    {
        "instance.stored",
        "series.added",
        "study.stable",
        "study.reopened",
        "study.reconcile",
        "job.queued",
        "job.started",
        "job.succeeded",
        "job.failed",
        "job.cancelled",
        "result.stored",
        "result.signed",
        "object.deleted",
    }
)
"""Every kind of event the feed carries."""

PUBLISH_LOCK = 0x50414353  # advisory lock key of the PostgreSQL publisher ("PACS")
PUBLISH_BATCH = 10_000


class ChangeEventRow(Base):
    """One event of the change feed (``seq`` is NULL until published, PostgreSQL only)."""

    __tablename__ = "change_event"

    pk: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


CHANGE: Table = ChangeEventRow.__table__  # type: ignore[assignment]


class ChangeEvent(BaseModel):
    """One event as readers see it; a pydantic model so that ``/api/changes`` answers it as
    it is."""

    model_config = ConfigDict(frozen=True)

    seq: int
    kind: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    payload: dict[str, Any] | None
    created_at: datetime

    @field_serializer("created_at")
    def _created_at(self, created_at: datetime) -> str:
        return created_at.isoformat()

    def as_json(self) -> dict[str, Any]:
        """The event as a JSON object (API and webhooks)."""
        return self.model_dump(mode="json")


EVENT_COLUMNS = [
    "kind",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "payload",
    "created_at",
]
"""The columns an event is written with (``seq`` and ``pk`` are the feed's)."""
_INSERT_PG = Prepared(CHANGE.insert(), column_keys=EVENT_COLUMNS)
_INSERT_SQLITE = Prepared(
    CHANGE.insert().values(
        seq=select(
            func.coalesce(func.max(CHANGE.c.seq), literal_column("0")) + literal_column("1")
        ).scalar_subquery(),
        **{name: bindparam(name) for name in EVENT_COLUMNS},
    )
)
_PUBLISH = text(
    """
    UPDATE change_event AS c SET seq = t.base + t.rn
    FROM (
        SELECT pk,
               (SELECT coalesce(max(seq), 0) FROM change_event) AS base,
               row_number() OVER (ORDER BY pk) AS rn
        FROM change_event WHERE seq IS NULL ORDER BY pk LIMIT :batch
    ) AS t
    WHERE c.pk = t.pk
    """
)


def record(
    conn: Connection,
    kind: str,
    *,
    study_instance_uid: str = "",
    series_instance_uid: str = "",
    sop_instance_uid: str = "",
    payload: dict[str, Any] | None = None,
) -> None:
    """Append an event inside the caller's transaction (visible once it commits)."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    params = {
        "kind": kind,
        "study_instance_uid": study_instance_uid,
        "series_instance_uid": series_instance_uid,
        "sop_instance_uid": sop_instance_uid,
        "payload": None if payload is None else json.dumps(payload, separators=(",", ":")),
        "created_at": db_timestamp(conn, utcnow()),
    }
    statement = _INSERT_PG if conn.dialect.name == "postgresql" else _INSERT_SQLITE
    statement.execute(conn, params)


def on_ingest(conn: Connection, event: IngestEvent) -> None:
    """Record ``series.added`` / ``instance.stored`` for an ingest event, in its transaction."""
    attrs = event.attrs
    if isinstance(event, SeriesAdded):
        record(
            conn,
            "series.added",
            study_instance_uid=attrs.study_instance_uid,
            series_instance_uid=attrs.series_instance_uid,
            payload={"modality": attrs.modality},
        )
        return
    record(
        conn,
        "instance.stored",
        study_instance_uid=attrs.study_instance_uid,
        series_instance_uid=attrs.series_instance_uid,
        sop_instance_uid=attrs.sop_instance_uid,
    )


def publish(conn: Connection) -> int:
    """Number the committed, unpublished events (PostgreSQL; a no-op on SQLite).

    Runs in the caller's transaction and holds the publisher lock until it ends: call it in a
    short transaction of its own. Returns how many events were numbered.
    """
    if conn.dialect.name != "postgresql":
        return 0
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PUBLISH_LOCK})
    total = 0
    while True:
        numbered = conn.execute(_PUBLISH, {"batch": PUBLISH_BATCH}).rowcount
        total += numbered
        if numbered < PUBLISH_BATCH:
            return total


def read_since(
    conn: Connection, since: int, limit: int = 100, kinds: set[str] | None = None
) -> list[ChangeEvent]:
    """Events with ``seq > since``, oldest first, at most ``limit`` (optionally of ``kinds``)."""
    if conn.dialect.name == "postgresql":
        with conn.engine.begin() as publisher:
            publish(publisher)
    query = (
        select(
            CHANGE.c.seq,
            CHANGE.c.kind,
            CHANGE.c.study_instance_uid,
            CHANGE.c.series_instance_uid,
            CHANGE.c.sop_instance_uid,
            CHANGE.c.payload,
            CHANGE.c.created_at,
        )
        .where(CHANGE.c.seq > since)
        .order_by(CHANGE.c.seq)
        .limit(limit)
    )
    if kinds:
        query = query.where(CHANGE.c.kind.in_(sorted(kinds)))
    return [
        ChangeEvent(
            seq=row.seq,
            kind=row.kind,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            payload=row.payload,
            created_at=as_utc(row.created_at),
        )
        for row in conn.execute(query)
    ]


def last_seq(conn: Connection) -> int:
    """The newest published sequence number (0 for an empty feed)."""
    return int(conn.scalar(select(func.coalesce(func.max(CHANGE.c.seq), 0))) or 0)
