"""One access to audit (:class:`Access`) and how its outcome maps to a FHIR AuditEvent
outcome code."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from pacs.security.subject import Subject


class Protocol(StrEnum):
    """The protocol an access came over."""

    HTTP = "http"  # /api, web pages
    DIMSE = "dimse"
    FHIR = "fhir"
    DICOMWEB = "dicomweb"


class Outcome(StrEnum):
    """FHIR AuditEvent.outcome (http://hl7.org/fhir/audit-event-outcome)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"  # refused: bad request, not allowed, not found
    SERIOUS_FAILURE = "8"  # the server failed
    MAJOR_FAILURE = "12"


_DIMSE_SUCCESS = {0x0000, 0xFF00, 0xFF01, 0xFE00, 0x0107, 0x0116}
"""Success, pending, cancel and the warnings outside 0xBxxx."""


def outcome_code(protocol: str, status: int) -> Outcome:
    """The AuditEvent outcome of an HTTP or DIMSE status."""
    if protocol == Protocol.DIMSE:
        if status in _DIMSE_SUCCESS or 0xB000 <= status <= 0xBFFF:
            return Outcome.SUCCESS
        if (status & 0xFF00) in (0xA700, 0xC000) or status == 0x0110:
            return Outcome.SERIOUS_FAILURE
        return Outcome.MINOR_FAILURE
    if status < 400:
        return Outcome.SUCCESS
    return Outcome.MINOR_FAILURE if status < 500 else Outcome.SERIOUS_FAILURE


@dataclass(frozen=True, slots=True)
class Access:
    """One access: ``user`` did ``action`` (create, read, update, delete, search, query,
    execute, sign) on ``resource`` (a path, a FHIR reference or a DIMSE service), answered
    with ``outcome`` (an HTTP or DIMSE status). The rest says on behalf of whom, over which
    protocol, about which patient (identifier, never a name) and study, and whether it was a
    break-glass access (``break_glass`` is the stated reason)."""

    user: str
    action: str
    resource: str
    query: str = ""
    client_address: str = ""
    outcome: int = 200
    protocol: str = Protocol.HTTP
    subject_kind: str = ""
    roles: str = ""
    organisation: str = ""
    practitioner: str = ""
    patient: str = ""
    study: str = ""
    break_glass: str = ""

    @classmethod
    def by(cls, subject: Subject, action: str, resource: str, **fields: object) -> Access:
        """An access by ``subject`` (its name, kind, roles, organisation, practitioner and
        address) with the other fields given."""
        access = cls(
            subject.name,
            action,
            resource,
            client_address=subject.client_address,
            subject_kind=str(subject.kind),
            roles=",".join(sorted(subject.roles)),
            organisation=subject.organisation,
            practitioner=subject.practitioner,
        )
        return replace(access, **fields)  # type: ignore[arg-type]

    @property
    def outcome_code(self) -> Outcome:
        """The FHIR AuditEvent outcome code of ``outcome``."""
        return outcome_code(self.protocol, self.outcome)
