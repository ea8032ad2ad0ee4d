"""The hash chain of the audit trail: every row stores ``sha256(previous hash + canonical
row)`` and its sequence number, so a modified, deleted or inserted row breaks the chain
(:func:`verify`).

Appends are serialised by the chain head (``audit_chain``, one row): an append first
``UPDATE``s the head (``seq = seq + 1 ... RETURNING``), which takes the head's row lock on
PostgreSQL (a ``SELECT ... FOR UPDATE`` in one statement; a concurrent append waits and then
reads the committed head) and the write lock on SQLite (the statement is the transaction's
first, so it waits for the lock instead of failing on a stale snapshot); the row and the new
head hash are written in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.orm import Session

from pacs.audit.access import Access
from pacs.audit.tables import AuditChain, AuditEvent
from pacs.index.models import utcnow

HEAD = 1
"""Primary key of the chain head row."""

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
    """Append one row to the chain in the caller's transaction; returns its ``seq``.

    On SQLite the caller's transaction must not have read before (or must be a write
    transaction already): the head update is what takes the write lock."""
    head = _advance(conn)
    if head is None:  # a database created without the migration's head row
        conn.execute(insert(AuditChain).values(pk=HEAD, seq=0, hash=""))
        head = _advance(conn)
        assert head is not None
    seq, previous = head
    values = {**row_values(access, at), "seq": seq}
    values["hash"] = link(previous, values)
    conn.execute(insert(AuditEvent).values(**values))
    conn.execute(update(AuditChain).where(AuditChain.pk == HEAD).values(hash=values["hash"]))
    return seq


def _advance(conn: Connection | Session) -> tuple[int, str] | None:
    row = conn.execute(
        update(AuditChain)
        .where(AuditChain.pk == HEAD)
        .values(seq=AuditChain.seq + 1)
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
    """Walk the chain in ``seq`` order, recomputing every hash: a modified row breaks its
    hash, a deleted row a gap in ``seq`` (or the head, for the last row), a row inserted
    around :func:`append` has no ``seq`` after the chain began."""
    first = conn.scalar(select(func.min(AuditEvent.pk)).where(AuditEvent.seq.is_not(None)))
    unchained_query = select(func.count()).where(AuditEvent.seq.is_(None))
    unchained = int(conn.scalar(unchained_query) or 0)
    if first is not None:
        late = conn.scalar(unchained_query.where(AuditEvent.pk > first))
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
