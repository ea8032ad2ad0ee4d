"""Audit trail of HTTP access to patient data."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session

from pacs.index.models import AuditEvent
from viewer_api.deps import User


def record_access(
    session: Session, request: Request, user: User, action: str, outcome: int = 200
) -> None:
    """Record that ``user`` performed ``action`` on the requested resource, and commit."""
    # End the request's read transaction first: on SQLite a deferred transaction that has
    # read cannot take the write lock once another process (ingest, the EMR feed, a job
    # worker) committed after its snapshot ("database is locked" at once, no busy wait).
    session.commit()
    session.add(
        AuditEvent(
            user_name=user.name,
            action=action,
            resource=request.url.path[:255],
            query=str(request.url.query)[:1024],
            client_address=(request.client.host if request.client else "")[:64],
            outcome=outcome,
        )
    )
    session.commit()
