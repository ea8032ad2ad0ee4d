"""The audit trail: one ``audit_event`` row per access to patient data, over every protocol
(HTTP, DICOMweb, FHIR, DIMSE), in the shape of a FHIR AuditEvent (IHE BALP), hash-chained
in batches (``chain``), searchable at ``/fhir/AuditEvent`` (``search``) and optionally exported as
syslog (``export``). Writers go through :func:`record` (a transaction of its own),
:func:`record_on` (an engine; DIMSE) or :func:`append` (inside the transaction of the
change it audits)."""

from __future__ import annotations

from pacs.audit.access import Access, Outcome, Protocol
from pacs.audit.chain import Verification, append, seal, seal_on, verify
from pacs.audit.writer import record, record_on

__all__ = [
    "Access",
    "Outcome",
    "Protocol",
    "Verification",
    "append",
    "record",
    "record_on",
    "seal",
    "seal_on",
    "verify",
]
