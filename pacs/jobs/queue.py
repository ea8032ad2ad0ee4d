"""The durable job queue: rows of the ``job`` table, claimed under a lease.

Status: ``queued`` -> ``running`` -> ``succeeded``; a failed attempt becomes ``failed`` and is
claimable again after an exponential backoff, until ``max_attempts`` make it ``dead`` (the
dead letter, error kept). An operator may cancel (``cancelled``) or re-run a job. Claims use
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (each row goes to one worker; workers never wait on
each other) and the single write lock on SQLite. A worker that dies stops renewing its lease;
the reaper (every sweeper) puts the job back in the queue once the lease expired. Every
transition records its change event in the same transaction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Table,
    cast,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from pacs.changes import CHANGE, EVENT_COLUMNS, record
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import as_utc, utcnow
from pacs.jobs import JobError
from pacs.jobs.models import Job

log = logging.getLogger(__name__)

JOB: Table = Job.__table__  # type: ignore[assignment]

QUEUED, RUNNING, SUCCEEDED = "queued", "running", "succeeded"
FAILED, DEAD, CANCELLED = "failed", "dead", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, DEAD, CANCELLED)
CLAIMABLE = (QUEUED, FAILED)


class JobStateError(JobError):
    """The job is not in a state that allows the operation."""


class JobNotFound(JobError):
    """No job with this id."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (1-based): ``base * 2**(n-1)``, at most ``ceiling``."""

    base: float
    ceiling: float

    def delay(self, attempt: int) -> timedelta:
        """The delay after the ``attempt``-th failure."""
        return timedelta(seconds=min(self.ceiling, self.base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds the lease of."""

    pk: int
    analysis: str
    study_instance_uid: str
    study_version: int
    series_instance_uids: list[str]
    options: dict[str, Any]
    attempts: int
    max_attempts: int


Bind = Engine | Connection
"""Where a queue operation runs: an engine (a pooled connection per call) or a connection a
worker slot keeps open (no pool checkout per call; it must not be in a transaction)."""


def write(bind: Bind) -> Any:
    """A write transaction: the SQLite writer turn, ``BEGIN IMMEDIATE``; use with ``with``."""
    return _WriteTx(bind)


class _WriteTx:
    def __init__(self, bind: Bind) -> None:
        self.bind = bind

    def __enter__(self) -> Connection:
        engine = self.bind if isinstance(self.bind, Engine) else self.bind.engine
        self._turn = writer_turn(engine)
        self._turn.__enter__()
        if isinstance(self.bind, Engine):
            self._conn = self.bind.connect().execution_options(**WRITE)
        else:
            self._conn = self.bind
        self._tx = self._conn.begin()
        return self._conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if kind is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            if isinstance(self.bind, Engine):
                self._conn.close()
            self._turn.__exit__(kind, exc, tb)


def enqueue(
    conn: Connection,
    *,
    analysis: str,
    study_instance_uid: str,
    study_version: int,
    series_instance_uids: list[str],
    priority: int = 0,
    options: dict[str, Any] | None = None,
    rule: str = "",
    max_attempts: int = 5,
) -> int | None:
    """Queue a job in the caller's transaction; None when this study version already has a
    job for this analysis (the unique key makes that race-free)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    now = utcnow()
    pk = conn.execute(
        dialect.insert(JOB)
        .values(
            analysis=analysis,
            study_instance_uid=study_instance_uid,
            study_version=study_version,
            series_instance_uids=series_instance_uids,
            options=options or {},
            rule=rule,
            priority=priority,
            status=QUEUED,
            attempts=0,
            max_attempts=max_attempts,
            run_after=now,
            cancel_requested=False,
            error="",
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["study_instance_uid", "study_version", "analysis"])
        .returning(JOB.c.pk)
    ).scalar()
    if pk is not None:
        _event(conn, "job.queued", pk, analysis, study_instance_uid, version=study_version)
    return pk


def _event(conn: Connection, kind: str, pk: int, analysis: str, study: str, **payload: Any) -> None:
    record(
        conn,
        kind,
        study_instance_uid=study,
        payload={"job_id": pk, "analysis": analysis, **payload},
    )


def _with_event(
    conn: Connection,
    statement: Any,
    kind: str,
    now: datetime,
    *columns: tuple[str, str],
    **values: Any,
) -> Any:
    """PostgreSQL: run a job ``UPDATE ... RETURNING pk, analysis, study_instance_uid, ...``
    and insert its change event in the same statement (a data-modifying CTE), so that a
    worker on an autocommit connection needs one round trip per transition. The payload has
    ``job_id``, ``analysis``, the returned ``columns`` (payload key, column) and ``values``."""
    changed = statement.cte("changed")
    pairs: list[Any] = [literal("job_id"), changed.c.pk, literal("analysis"), changed.c.analysis]
    for key, column in columns:
        pairs += [literal(key), changed.c[column]]
    for key, value in values.items():
        pairs += [literal(key), cast(literal(json.dumps(value)), JSON)]
    event = (
        CHANGE.insert()
        .from_select(
            EVENT_COLUMNS,
            select(
                literal(kind),
                changed.c.study_instance_uid,
                literal(""),
                literal(""),
                func.json_build_object(*pairs),
                literal(now, DateTime(timezone=True)),
            ),
        )
        .cte("event")
    )
    return conn.execute(select(changed).add_cte(event))


def _claimable(now: datetime, busy: set[str]) -> Any:
    query = select(JOB.c.pk).where(JOB.c.status.in_(CLAIMABLE), JOB.c.run_after <= now)
    if busy:
        query = query.where(JOB.c.analysis.not_in(sorted(busy)))
    return query


def has_claimable(engine: Engine, busy: set[str] | None = None) -> bool:
    """A cheap read: is any job ready to run (so that idle workers take no write lock)?"""
    with engine.connect() as conn:
        return conn.scalar(_claimable(utcnow(), busy or set()).limit(1)) is not None


def claim(
    engine: Bind, owner: str, lease_seconds: float, busy: set[str] | None = None
) -> ClaimedJob | None:
    """Take the most urgent ready job (highest priority, oldest) under a lease."""
    now = utcnow()
    chosen = (
        _claimable(now, busy or set())
        .order_by(JOB.c.priority.desc(), JOB.c.run_after, JOB.c.pk)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(JOB)
        .where(JOB.c.pk == chosen)
        .values(
            status=RUNNING,
            attempts=JOB.c.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
        )
        .returning(
            JOB.c.pk,
            JOB.c.analysis,
            JOB.c.study_instance_uid,
            JOB.c.study_version,
            JOB.c.series_instance_uids,
            JOB.c.options,
            JOB.c.attempts,
            JOB.c.max_attempts,
        )
    )
    with write(engine) as conn:
        if conn.dialect.name == "postgresql":  # one statement: the claim and its event
            row = _with_event(
                conn, statement, "job.started", now, ("attempt", "attempts"), worker=owner
            ).fetchone()
            return None if row is None else ClaimedJob(*row)
        row = conn.execute(statement).fetchone()
        if row is None:
            return None
        job = ClaimedJob(*row)
        _event(
            conn,
            "job.started",
            job.pk,
            job.analysis,
            job.study_instance_uid,
            attempt=job.attempts,
            worker=owner,
        )
    return job


def renew(engine: Engine, pk: int, owner: str, lease_seconds: float) -> tuple[bool, bool]:
    """Extend the lease of a running job; returns (still held, cancel requested)."""
    now = utcnow()
    with write(engine) as conn:
        row = conn.execute(
            update(JOB)
            .where(JOB.c.pk == pk, JOB.c.status == RUNNING, JOB.c.lease_owner == owner)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
            .returning(JOB.c.cancel_requested)
        ).fetchone()
    return (row is not None, bool(row[0]) if row is not None else False)


def _finish(conn: Connection, pk: int, owner: str, **values: Any) -> Any:
    return conn.execute(
        update(JOB)
        .where(JOB.c.pk == pk, JOB.c.status == RUNNING, JOB.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, finished_at=utcnow(), **values)
        .returning(JOB.c.analysis, JOB.c.study_instance_uid, JOB.c.attempts, JOB.c.max_attempts)
    ).fetchone()


def complete(engine: Bind, job: ClaimedJob, owner: str, result: dict[str, Any]) -> bool:
    """Mark a job succeeded; False if the lease was lost meanwhile (another worker has it)."""
    with write(engine) as conn:
        if conn.dialect.name == "postgresql":  # one statement: the outcome and its event
            now = utcnow()
            statement = (
                update(JOB)
                .where(JOB.c.pk == job.pk, JOB.c.status == RUNNING, JOB.c.lease_owner == owner)
                .values(
                    status=SUCCEEDED,
                    error="",
                    result=result,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                )
                .returning(JOB.c.pk, JOB.c.analysis, JOB.c.study_instance_uid)
            )
            outputs = list(result.get("output_sop_instance_uids", []))
            return (
                _with_event(conn, statement, "job.succeeded", now, outputs=outputs).fetchone()
                is not None
            )
        row = _finish(conn, job.pk, owner, status=SUCCEEDED, error="", result=result)
        if row is not None:
            outputs = result.get("output_sop_instance_uids", [])
            _event(conn, "job.succeeded", job.pk, row[0], row[1], outputs=outputs)
    return row is not None


def fail(
    engine: Bind, job: ClaimedJob, owner: str, error: str, backoff: Backoff, permanent: bool
) -> str | None:
    """Record a failed attempt: ``failed`` (retried after the backoff) or ``dead``; returns
    the new status, None if the lease was lost."""
    dead = permanent or job.attempts >= job.max_attempts
    status = DEAD if dead else FAILED
    with write(engine) as conn:
        row = _finish(
            conn,
            job.pk,
            owner,
            status=status,
            error=error[:4000],
            run_after=utcnow() + backoff.delay(job.attempts),
        )
        if row is None:
            return None
        _event(
            conn,
            "job.failed",
            job.pk,
            row[0],
            row[1],
            attempt=row[2],
            status=status,
            error=error[:500],
        )
    return status


def cancelled(engine: Bind, job: ClaimedJob, owner: str) -> bool:
    """A running job stopped on an operator's request."""
    with write(engine) as conn:
        row = _finish(conn, job.pk, owner, status=CANCELLED, error="cancelled by an operator")
        if row is not None:
            _event(conn, "job.cancelled", job.pk, row[0], row[1])
    return row is not None


def cancel(engine: Engine, pk: int) -> dict[str, Any]:
    """Cancel a job: at once if it waits, at its next heartbeat (or lease expiry) if it
    runs. JobStateError when it already ended."""
    with write(engine) as conn:
        row = _locked(conn, pk)
        if row.status in CLAIMABLE:
            conn.execute(
                update(JOB)
                .where(JOB.c.pk == pk)
                .values(status=CANCELLED, error="cancelled by an operator", finished_at=utcnow())
            )
            _event(conn, "job.cancelled", pk, row.analysis, row.study_instance_uid)
        elif row.status == RUNNING:
            conn.execute(update(JOB).where(JOB.c.pk == pk).values(cancel_requested=True))
        else:
            raise JobStateError(f"job {pk} is {row.status}: nothing to cancel")
    return get_job(engine, pk)


def retry(engine: Engine, pk: int) -> dict[str, Any]:
    """Re-run a job that ended (succeeded, dead, failed, cancelled) from attempt 1."""
    with write(engine) as conn:
        row = _locked(conn, pk)
        if row.status in (QUEUED, RUNNING):
            raise JobStateError(f"job {pk} is {row.status}: it will run anyway")
        conn.execute(
            update(JOB)
            .where(JOB.c.pk == pk)
            .values(
                status=QUEUED,
                attempts=0,
                run_after=utcnow(),
                error="",
                cancel_requested=False,
                finished_at=None,
            )
        )
        _event(
            conn,
            "job.queued",
            pk,
            row.analysis,
            row.study_instance_uid,
            version=row.study_version,
            retry=True,
        )
    return get_job(engine, pk)


def _locked(conn: Connection, pk: int) -> Any:
    row = conn.execute(select(JOB).where(JOB.c.pk == pk).with_for_update()).fetchone()
    if row is None:
        raise JobNotFound(f"no job {pk}")
    return row


def reap(engine: Engine, backoff: Backoff, limit: int = 100) -> int:
    """Return jobs whose lease expired (their worker died) to the queue, or to ``dead`` /
    ``cancelled``; returns how many were reaped."""
    now = utcnow()
    expired = select(JOB.c.pk).where(JOB.c.status == RUNNING, JOB.c.lease_expires_at < now)
    with engine.connect() as conn:
        if conn.scalar(expired.limit(1)) is None:
            return 0
    with write(engine) as conn:
        rows = conn.execute(
            select(JOB)
            .where(JOB.c.pk.in_(expired.scalar_subquery()))
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).fetchall()
        for row in rows:
            if row.cancel_requested:
                status, error = CANCELLED, "cancelled by an operator"
            elif row.attempts >= row.max_attempts:
                status, error = DEAD, f"lease expired ({row.lease_owner} lost) on the last attempt"
            else:
                status, error = FAILED, f"lease expired ({row.lease_owner} lost)"
            conn.execute(
                update(JOB)
                .where(JOB.c.pk == row.pk)
                .values(
                    status=status,
                    error=error,
                    lease_owner=None,
                    lease_expires_at=None,
                    run_after=now
                    + (backoff.delay(row.attempts) if status == FAILED else timedelta()),
                    finished_at=None if status == FAILED else now,
                )
            )
            kind = "job.cancelled" if status == CANCELLED else "job.failed"
            _event(
                conn,
                kind,
                row.pk,
                row.analysis,
                row.study_instance_uid,
                attempt=row.attempts,
                status=status,
                error=error,
            )
            log.warning("job %d: %s -> %s", row.pk, error, status)
    return len(rows)


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def job_json(row: Any) -> dict[str, Any]:
    """A job row as JSON."""
    return {
        "id": row.pk,
        "analysis": row.analysis,
        "study_instance_uid": row.study_instance_uid,
        "study_version": row.study_version,
        "series_instance_uids": row.series_instance_uids,
        "rule": row.rule,
        "priority": row.priority,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "run_after": _stamp(row.run_after),
        "lease_owner": row.lease_owner,
        "lease_expires_at": _stamp(row.lease_expires_at),
        "heartbeat_at": _stamp(row.heartbeat_at),
        "cancel_requested": row.cancel_requested,
        "error": row.error,
        "result": row.result,
        "options": row.options,
        "created_at": _stamp(row.created_at),
        "started_at": _stamp(row.started_at),
        "finished_at": _stamp(row.finished_at),
    }


def get_job(engine: Engine, pk: int) -> dict[str, Any]:
    """One job as JSON; JobNotFound if there is none."""
    with engine.connect() as conn:
        row = conn.execute(select(JOB).where(JOB.c.pk == pk)).fetchone()
    if row is None:
        raise JobNotFound(f"no job {pk}")
    return job_json(row)


def list_jobs(
    engine: Engine,
    *,
    status: str | None = None,
    analysis: str | None = None,
    study_instance_uid: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally filtered."""
    query = select(JOB).order_by(JOB.c.pk.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(JOB.c.status == status)
    if analysis:
        query = query.where(JOB.c.analysis == analysis)
    if study_instance_uid:
        query = query.where(JOB.c.study_instance_uid == study_instance_uid)
    with engine.connect() as conn:
        return [job_json(row) for row in conn.execute(query)]


def queue_stats(engine: Engine) -> dict[str, Any]:
    """Jobs per status and the age in seconds of the oldest ready job (0 if none)."""
    now = utcnow()
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(select(JOB.c.status, func.count()).group_by(JOB.c.status)).all()
        )
        oldest = conn.scalar(
            select(func.min(JOB.c.run_after)).where(
                JOB.c.status.in_(CLAIMABLE), JOB.c.run_after <= now
            )
        )
    age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
    return {"by_status": {s: int(counts.get(s, 0)) for s in STATUSES}, "oldest_ready_seconds": age}
