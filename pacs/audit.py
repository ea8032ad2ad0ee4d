"""The audit trail: one ``audit_event`` row per access to patient data (who, what, when, from
where, with what outcome). Every writer goes through :func:`access_event`, on its own
transaction (:func:`record`) or inside the transaction of the change it audits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Insert, insert
from sqlalchemy.orm import Session

from pacs.index.models import AuditEvent, utcnow


@dataclass(frozen=True, slots=True)
class Access:
    """One access: ``user`` did ``action`` (read, search, create, update, delete, sign) on
    ``resource`` (a path), answered with ``outcome`` (an HTTP status)."""

    user: str
    action: str
    resource: str
    query: str = ""
    client_address: str = ""
    outcome: int = 200


def access_event(access: Access, at: datetime | None = None) -> Insert:
    """The INSERT of one audit row, its columns cut to their sizes."""
    return insert(AuditEvent).values(
        recorded_at=at or utcnow(),
        user_name=access.user[:128],
        action=access.action[:16],
        resource=access.resource[:255],
        query=access.query[:1024],
        client_address=access.client_address[:64],
        outcome=access.outcome,
    )


def record(session: Session, access: Access) -> None:
    """Write one audit row in a transaction of its own and commit."""
    # End the caller's read transaction first: on SQLite a deferred transaction that has
    # read cannot take the write lock once another process (ingest, the EMR feed, a job
    # worker) committed after its snapshot ("database is locked" at once, no busy wait).
    session.commit()
    session.execute(access_event(access))
    session.commit()
