"""The audit trail of one HTTP request (``pacs.audit`` rows: who, on behalf of which
organisation, from where, what patient/study/resource, action, outcome)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode

from fastapi import Request
from sqlalchemy.orm import Session

from pacs.audit import Access, Protocol, record
from pacs.security.subject import Subject

T = TypeVar("T")

CLIENT_CLOSED = 499
"""Outcome of a response the client stopped reading (nginx's convention)."""
STREAM_FAILED = 500
"""Outcome of a response body that failed while it was sent."""

_NAME_KEYS = {"family", "given", "phonetic", "00100010"}
"""Query keys whose values are person names (besides any key containing 'name')."""


def scrub_query(query: str) -> str:
    """The query string with the values of person-name parameters (``PatientName``,
    ``name``, ``family``, ``given``, ...) replaced by ``*``: audit rows hold identifiers,
    never names."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [
            (key, "*" if "name" in key.lower() or key.lower() in _NAME_KEYS else value)
            for key, value in pairs
        ]
    )


def protocol_of(path: str) -> Protocol:
    """The protocol of a request path."""
    if path.startswith("/fhir"):
        return Protocol.FHIR
    if path.startswith("/dicomweb"):
        return Protocol.DICOMWEB
    return Protocol.HTTP


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Records accesses of ``subject`` to the requested resource (see ``deps.AuditDep``)."""

    session: Session
    request: Request
    subject: Subject

    def __call__(
        self,
        action: str,
        outcome: int = 200,
        *,
        patient: str = "",
        study: str = "",
        resource: str = "",
        break_glass: str = "",
    ) -> None:
        """Record that the subject performed ``action`` with ``outcome`` (HTTP status) on
        ``resource`` (default: the request path) of ``patient`` (identifier) / ``study``
        (UID); ``break_glass`` is the reason of an access outside the policy. Commits (after
        ending the request's read transaction)."""
        access = self.access(action, outcome, patient, study, resource, break_glass)
        record(self.session, access)

    def access(
        self,
        action: str,
        outcome: int = 200,
        patient: str = "",
        study: str = "",
        resource: str = "",
        break_glass: str = "",
    ) -> Access:
        """The :class:`Access` this request's record of ``action`` is."""
        url = self.request.url
        return Access.by(
            self.subject,
            action,
            resource or url.path,
            query=scrub_query(str(url.query)),
            client_address=self.client_address,
            outcome=outcome,
            protocol=protocol_of(url.path),
            patient=patient,
            study=study,
            break_glass=break_glass or self.subject.break_glass,
        )

    def streamed(
        self, action: str, body: Iterator[T], *, patient: str = "", study: str = ""
    ) -> Iterator[T]:
        """``body``, recorded once it has been sent whole (200), failed (500) or was
        abandoned by the client (499): the real outcome of a streamed response."""
        outcome = CLIENT_CLOSED
        try:
            yield from body
            outcome = 200
        except Exception:
            outcome = STREAM_FAILED
            raise
        finally:
            access = self.access(action, outcome, patient, study)
            with self.request.app.state.sessions() as session:  # the request's may be closed
                record(session, access)

    @property
    def user(self) -> str:
        """The subject's name."""
        return self.subject.name

    @property
    def client_address(self) -> str:
        """The caller's address."""
        if self.subject.client_address:
            return self.subject.client_address
        return self.request.client.host if self.request.client else ""
