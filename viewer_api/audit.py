"""The audit trail of one HTTP request (``pacs.audit`` rows: who, what, when, from where)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session

from pacs.audit import Access, record


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Records accesses of ``user`` to the requested resource (see ``deps.AuditDep``)."""

    session: Session
    request: Request
    user: str
    break_glass: str = ""  # a clinician's break-glass reason: flagged on every record

    def __call__(self, action: str, outcome: int = 200) -> None:
        """Record that the user performed ``action`` with ``outcome`` (HTTP status); commits
        (after ending the request's read transaction)."""
        url = self.request.url
        query = str(url.query)
        if self.break_glass:
            query = f"{query} [break-glass: {self.break_glass}]".strip()
        access = Access(self.user, action, url.path, query, self.client_address, outcome)
        record(self.session, access)

    @property
    def client_address(self) -> str:
        """The caller's address."""
        return self.request.client.host if self.request.client else ""
