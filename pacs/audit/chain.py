"""The hash chain of the audit trail: every sealed row stores ``sha256(previous hash +
canonical row)`` and its sequence number, so a modified, deleted or inserted sealed row
breaks the chain (:func:`verify`).

Writers only INSERT (:func:`append`: no lock, so audited requests do not queue behind each
other); :func:`seal` chains the unsealed rows in batches, in ``pk`` order, under the chain
head (``audit_chain``, one row): it first ``UPDATE``s the head, which takes the head's row
lock on PostgreSQL (a concurrent sealer waits and then reads the committed head) and the write
lock on SQLite; the rows' ``seq``/``hash`` and the new head are written in the same
transaction. The background loop of every archive process seals every
``audit_seal_interval`` seconds (:func:`seal_on`), :func:`verify` seals before it walks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from pacs.audit.access import Access
from pacs.audit.tables import AuditChain, AuditEvent
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import utcnow

HEAD = 1
"""Primary key of the chain head row."""

LEGACY = ""
"""``hash`` of the rows written before the chain (migration 0014; marked by 0017): never
sealed. An unsealed row has ``seq`` and ``hash`` NULL."""

CHAINED = (
    "seq",
    "recorded_at",
    "user_name",
    "subject_kind",
    "roles",
    "organisation",
    "practitioner",
    "client_address",
    "protocol",
    "action",
    "resource",
    "query",
    "patient_identifier",
    "study_instance_uid",
    "outcome",
    "outcome_code",
    "break_glass",
    "break_glass_reason",
)
"""The columns the hash covers (all but ``pk`` and ``hash``)."""


_CONTROLS = dict.fromkeys(range(32), "?") | {127: "?"}


def _text(value: str, size: int) -> str:
    """``value`` cut to ``size``, control characters (NUL, which PostgreSQL cannot store,
    from a hostile parameter) as ``?``."""
    return str(value)[:size].translate(_CONTROLS)


def row_values(access: Access, at: datetime | None = None) -> dict[str, Any]:
    """The columns of one audit row (without ``seq``/``hash``), cut to their sizes."""
    return {
        "recorded_at": at or utcnow(),
        "user_name": _text(access.user, 128),
        "subject_kind": _text(access.subject_kind, 16),
        "roles": _text(access.roles, 128),
        "organisation": _text(access.organisation, 128),
        "practitioner": _text(access.practitioner, 128),
        "client_address": _text(access.client_address, 64),
        "protocol": _text(access.protocol, 16),
        "action": _text(access.action, 16),
        "resource": _text(access.resource, 255),
        "query": _text(access.query, 1024),
        "patient_identifier": _text(access.patient, 64),
        "study_instance_uid": _text(access.study, 64),
        "outcome": access.outcome,
        "outcome_code": str(access.outcome_code),
        "break_glass": bool(access.break_glass),
        "break_glass_reason": _text(access.break_glass, 255),
    }


def _timestamp(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.isoformat(timespec="microseconds")


def canonical(row: Mapping[Any, Any]) -> bytes:
    """The row as hashed: the ``CHAINED`` columns as compact JSON, keys sorted, the time in
    UTC with microseconds (what both databases give back)."""
    values = {name: row[name] for name in CHAINED}
    values["recorded_at"] = _timestamp(row["recorded_at"])
    values["break_glass"] = bool(values["break_glass"])
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(previous: str, row: Mapping[Any, Any]) -> str:
    """``sha256(previous hash + canonical row)``, hex."""
    return hashlib.sha256(previous.encode() + canonical(row)).hexdigest()


def append(conn: Connection | Session, access: Access, at: datetime | None = None) -> int:
    """Write one unsealed row in the caller's transaction (a plain INSERT: no chain lock);
    returns its ``pk``. :func:`seal` gives it its chain position later."""
    row = insert(AuditEvent).values(**row_values(access, at)).returning(AuditEvent.pk)
    return int(conn.execute(row).scalar_one())


def seal(conn: Connection | Session, limit: int = 1000) -> int:
    """Chain up to ``limit`` unsealed rows, in ``pk`` order, in the caller's transaction:
    lock the head, give each row the next ``seq`` and its hash, advance the head. Returns the
    number sealed; the caller commits. Two sealers are serialised by the head lock (the
    second, after the first commits, reads the advanced head and finds the next rows).

    On SQLite the head update must be the transaction's first statement (or the transaction
    a write transaction already): it is what takes the write lock."""
    head = _lock(conn)
    if head is None:  # a database created without the migration's head row
        conn.execute(insert(AuditChain).values(pk=HEAD, seq=0, hash=""))
        head = _lock(conn)
        assert head is not None
    seq, previous = head
    columns = [getattr(AuditEvent, name) for name in CHAINED if name != "seq"]
    rows = conn.execute(
        select(AuditEvent.pk, *columns)
        .where(AuditEvent.seq.is_(None), AuditEvent.hash.is_(None))
        .order_by(AuditEvent.pk)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    sealed = []
    for row in rows:
        seq += 1
        previous = link(previous, {**row._mapping, "seq": seq})
        sealed.append({"row": row.pk, "new_seq": seq, "new_hash": previous})
    table = AuditEvent.__table__
    assert isinstance(table, Table)
    conn.execute(
        update(table)
        .where(table.c.pk == bindparam("row"))
        .values(seq=bindparam("new_seq"), hash=bindparam("new_hash")),
        sealed,
    )
    conn.execute(update(AuditChain).where(AuditChain.pk == HEAD).values(seq=seq, hash=previous))
    return len(rows)


def seal_on(engine: Engine, limit: int = 1000) -> int:
    """Seal every row written so far through ``engine``, ``limit`` rows per transaction;
    returns the number sealed (the background sealer, ``pacs audit verify``)."""
    total = 0
    while True:
        with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
            count = seal(conn, limit)
        total += count
        if count < limit:
            return total


def _lock(conn: Connection | Session) -> tuple[int, str] | None:
    """The head (``seq``, ``hash``), locked: a no-op ``UPDATE`` takes the row lock on
    PostgreSQL (a concurrent sealer waits, then reads the committed head) and the write lock
    on SQLite."""
    row = conn.execute(
        update(AuditChain)
        .where(AuditChain.pk == HEAD)
        .values(seq=AuditChain.seq)
        .returning(AuditChain.seq, AuditChain.hash)
    ).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]))


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of :func:`verify`: ``problem`` is '' when the chain is intact."""

    checked: int
    unchained: int  # rows written before the chain existed (migration 0014)
    problem: str = ""
    seq: int | None = None  # where the problem is

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return not self.problem


def verify(conn: Connection | Session, batch: int = 1000) -> Verification:
    """Seal the rows written so far (committing ``conn``'s transaction, then one per
    ``batch`` rows), then walk the chain in ``seq`` order, recomputing every hash: a modified
    row breaks its hash, a deleted row a gap in ``seq`` (or the head, for the last row), a
    row marked as older than the chain (or given a hash by hand) after the chain began has no
    chain position."""
    conn.commit()
    while seal(conn, batch) == batch:
        conn.commit()
    conn.commit()
    first = conn.scalar(select(func.min(AuditEvent.pk)).where(AuditEvent.seq.is_not(None)))
    unchained = int(
        conn.scalar(select(func.count()).where(AuditEvent.seq.is_(None), AuditEvent.hash == LEGACY))
        or 0
    )
    stray = AuditEvent.hash != LEGACY
    if first is not None:
        stray = or_(stray, AuditEvent.pk > first)
    late = conn.scalar(
        select(func.count()).where(AuditEvent.seq.is_(None), AuditEvent.hash.is_not(None), stray)
    )
    if late:
        return Verification(0, unchained, f"{late} row(s) without a chain position")
    previous, expected, checked = "", 1, 0
    for row in _rows(conn, batch):
        if row["seq"] != expected:
            return Verification(checked, unchained, "a row is missing", expected)
        if link(previous, row) != row["hash"]:
            return Verification(checked, unchained, "a row was modified", expected)
        previous, expected, checked = row["hash"], expected + 1, checked + 1
    head = conn.execute(select(AuditChain.seq, AuditChain.hash).where(AuditChain.pk == HEAD))
    found = head.one_or_none()
    if found is not None and (found[0], found[1]) != (checked, previous):
        return Verification(checked, unchained, "the last row(s) are missing", checked + 1)
    return Verification(checked, unchained)


def _rows(conn: Connection | Session, batch: int) -> Iterator[Mapping[Any, Any]]:
    """Chained rows in ``seq`` order, ``batch`` at a time (keyset paging)."""
    columns = [getattr(AuditEvent, name) for name in (*CHAINED, "hash")]
    last = 0
    while True:
        rows = conn.execute(
            select(*columns).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            yield row._mapping
        last = rows[-1].seq
