"""``AuditEvent`` search and read over the audit table: the auditors' view, and a patient's
access log of their own record.

Parameters: ``patient`` (identifier, or ``Patient/<id>`` resolved by the caller), ``date``
(``ge``/``gt``/``le``/``lt``/``eq`` with year to second precision, repeatable), ``agent``
(user or AE name, or ``Practitioner/<id>``), ``entity`` (the resource path or reference, or a
study as ``urn:oid:<UID>``), ``_count`` (default 50, at most 1000) and ``_offset`` (paging).
Newest first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from pacs.audit.resource import Names, audit_event
from pacs.audit.tables import AuditEvent
from pacs.fhir.errors import FhirError, InvalidSearch

DEFAULT_COUNT = 50
MAX_COUNT = 1000
_DATE = re.compile(r"^(eq|ge|gt|le|lt)?(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(.+))?)?)?$")


CAPABILITY: dict[str, Any] = {
    "type": "AuditEvent",
    "documentation": "The audit trail (IHE BALP), read-only: administrators see every event, "
    "a patient the events of their own record (with organisation and practitioner names).",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "versioning": "no-version",
    "readHistory": False,
    "updateCreate": False,
    "searchParam": [
        {
            "name": "patient",
            "type": "reference",
            "documentation": "Patient identifier value (as in DICOM PatientID) or Patient/<id>.",
        },
        {"name": "date", "type": "date", "documentation": "AuditEvent.recorded; eq ge gt le lt."},
        {
            "name": "agent",
            "type": "reference",
            "documentation": "User or AE name, or Practitioner/<id>.",
        },
        {
            "name": "entity",
            "type": "reference",
            "documentation": "Resource path or reference, "
            "or a study as urn:oid:<StudyInstanceUID>.",
        },
        {"name": "_count", "type": "number", "documentation": f"Page size, at most {MAX_COUNT}."},
        {"name": "_offset", "type": "number", "documentation": "Paging offset."},
    ],
}
"""The CapabilityStatement entry of ``/fhir/AuditEvent``."""


class Forbidden(FhirError):
    """The subject may not read these audit events (403)."""

    status = 403
    code = "forbidden"


class ReadOnly(FhirError):
    """The audit trail is written by the archive only (405)."""

    status = 405
    code = "not-supported"


@dataclass
class AuditQuery:
    """A parsed AuditEvent search."""

    patient: str | None = None
    agent: str | None = None
    entity: str | None = None
    dates: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0

    def params(self, offset: int) -> list[tuple[str, str]]:
        """The search parameters of this query at ``offset`` (for paging links)."""
        pairs = [
            (name, value)
            for name, value in (
                ("patient", self.patient),
                ("agent", self.agent),
                ("entity", self.entity),
            )
            if value is not None
        ]
        pairs += [("date", f"{op}{start.isoformat()}") for op, start, _end in self.dates]
        return [*pairs, ("_count", str(self.count)), ("_offset", str(offset))]


def _interval(text: str) -> tuple[str, datetime, datetime]:
    """(prefix, start, end) of a FHIR date(time) search value at its precision."""
    match = _DATE.match(text)
    if not match:
        raise InvalidSearch(f"date: {text!r} is not a FHIR date or dateTime")
    op, year, month, day, time = match.groups()
    try:
        if time:
            value = datetime.fromisoformat(f"{year}-{month}-{day}T{time.replace('Z', '+00:00')}")
            start = value if value.tzinfo else value.replace(tzinfo=UTC)
            end = start + timedelta(seconds=1)
        elif day:
            start = datetime(int(year), int(month), int(day), tzinfo=UTC)
            end = start + timedelta(days=1)
        elif month:
            start = datetime(int(year), int(month), 1, tzinfo=UTC)
            end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        else:
            start = datetime(int(year), 1, 1, tzinfo=UTC)
            end = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidSearch(f"date: {text!r}: {exc}") from None
    return op or "eq", start, end


def _number(name: str, value: str, maximum: int) -> int:
    if not value.isdigit():
        raise InvalidSearch(f"{name} must be a non-negative integer")
    return min(int(value), maximum)


def parse(params: Iterable[tuple[str, str]]) -> AuditQuery:
    """The query of search parameters; unknown parameters are ignored."""
    query = AuditQuery()
    for name, value in params:
        if name == "patient":
            query.patient = value.strip()
        elif name == "agent":
            query.agent = value.strip()
        elif name == "entity":
            query.entity = value.strip()
        elif name == "date":
            query.dates.append(_interval(value.strip()))
        elif name == "_count":
            query.count = _number(name, value, MAX_COUNT)
        elif name == "_offset":
            query.offset = _number(name, value, 2**31)
    return query


def _date_clause(op: str, start: datetime, end: datetime) -> ColumnElement[bool]:
    column = AuditEvent.recorded_at
    return {
        "eq": and_(column >= start, column < end),
        "ge": column >= start,
        "gt": column >= end,
        "le": column < end,
        "lt": column < start,
    }[op]


def _where(query: AuditQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if query.patient is not None:
        clauses.append(AuditEvent.patient_identifier == query.patient)
    if query.agent:
        practitioner = query.agent.removeprefix("Practitioner/")
        clauses.append(
            or_(AuditEvent.user_name == query.agent, AuditEvent.practitioner == practitioner)
        )
    if query.entity:
        entity = query.entity
        clauses.append(
            or_(
                AuditEvent.resource == entity,
                AuditEvent.resource == f"/fhir/{entity}",
                AuditEvent.study_instance_uid == entity.removeprefix("urn:oid:"),
            )
        )
    clauses += [_date_clause(*interval) for interval in query.dates]
    return clauses


def search(conn: Connection, query: AuditQuery) -> tuple[int, Sequence[Any]]:
    """(total, the rows of the page), newest first."""
    where = _where(query)
    total = conn.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0
    rows = conn.execute(
        select(AuditEvent.__table__)
        .where(*where)
        .order_by(AuditEvent.recorded_at.desc(), AuditEvent.pk.desc())
        .limit(query.count)
        .offset(query.offset)
    ).all()
    return int(total), rows


def read(conn: Connection, event_id: str) -> Any | None:
    """The row of ``AuditEvent/<event_id>``, or None."""
    if not event_id.isdigit() or len(event_id) > 18:
        return None
    return conn.execute(
        select(AuditEvent.__table__).where(AuditEvent.pk == int(event_id))
    ).one_or_none()


def bundle(
    query: AuditQuery, total: int, rows: Sequence[Any], base: str, names: Names
) -> dict[str, Any]:
    """The searchset Bundle of a page (``base``: the FHIR base URL)."""
    url = f"{base}/AuditEvent"
    links = [{"relation": "self", "url": f"{url}?{urlencode(query.params(query.offset))}"}]
    if query.offset + len(rows) < total and rows:
        following = urlencode(query.params(query.offset + query.count))
        links.append({"relation": "next", "url": f"{url}?{following}"})
    if query.offset > 0:
        previous = urlencode(query.params(max(0, query.offset - query.count)))
        links.append({"relation": "previous", "url": f"{url}?{previous}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{url}/{row.pk}",
                "resource": audit_event(row._mapping, names),
                "search": {"mode": "match"},
            }
            for row in rows
        ],
    }
