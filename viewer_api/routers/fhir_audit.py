"""``/fhir/AuditEvent``: the audit trail as FHIR AuditEvent resources, read-only.

Administrators (auditors) search and read every event; a patient reads the events of their
own record only (``AuditEvent?patient=`` is theirs whatever they ask for another), with the
names of the organisations and practitioners that accessed it: the access log of the
patient portal. Every other role is refused (403); writes are refused (405). Served before
the generic FHIR routes, which know no AuditEvent type.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from pacs.audit import search as audit_search
from pacs.audit.compartment import AgentNames, patient_by_id
from pacs.audit.resource import audit_event
from pacs.audit.search import AuditQuery, Forbidden, ReadOnly
from pacs.fhir.errors import ResourceNotFound
from pacs.security.subject import Role, Subject
from viewer_api.fhir_http import FhirCall, fhir_response, read_form
from viewer_api.routers.fhir import Fhir, interaction

router = APIRouter(prefix="/fhir/AuditEvent", tags=["fhir"])


def own_patient(subject: Subject) -> str | None:
    """None for an auditor (every event); the patient identifier a patient user may see;
    raise :class:`Forbidden` for anyone else."""
    if subject.is_admin:
        return None
    if subject.has(Role.PATIENT) and subject.patient:
        return subject.patient
    raise Forbidden("the audit trail is for auditors and, of their own record, patients")


def _search_sync(fhir: FhirCall, params: list[tuple[str, str]]) -> Response:
    query: AuditQuery = audit_search.parse(params)
    own = own_patient(fhir.audit.subject)
    if query.patient and query.patient.startswith("Patient/"):
        query.patient = patient_by_id(fhir.store, query.patient.removeprefix("Patient/")) or "-"
    if own is not None:
        if query.patient not in (None, own):
            raise Forbidden("a patient reads the access log of their own record only")
        query.patient = own
    fhir.noted["patient"] = query.patient or ""
    with fhir.store.engine.connect() as conn:
        total, rows = audit_search.search(conn, query)
    names = AgentNames(fhir.store)
    return fhir_response(audit_search.bundle(query, total, rows, fhir.base, names))


@router.get("")
@interaction("search")
async def search_audit_events(fhir: Fhir) -> Response:
    """Search the audit trail: ``patient``, ``date``, ``agent``, ``entity``, ``_count``,
    ``_offset``."""
    params = list(fhir.request.query_params.multi_items())
    return await run_in_threadpool(_search_sync, fhir, params)


@router.post("/_search")
@interaction("search")
async def search_audit_events_post(fhir: Fhir) -> Response:
    """Search with the parameters in a form body."""
    params = await read_form(fhir)
    return await run_in_threadpool(_search_sync, fhir, params)


def _read_sync(fhir: FhirCall, event_id: str) -> Response:
    own = own_patient(fhir.audit.subject)
    with fhir.store.engine.connect() as conn:
        row = audit_search.read(conn, event_id)
    if row is None or (own is not None and row.patient_identifier != own):
        raise ResourceNotFound(f"AuditEvent/{event_id} is not known")
    fhir.noted["patient"] = row.patient_identifier
    return fhir_response(audit_event(row._mapping, AgentNames(fhir.store)))


@router.get("/{event_id}")
@interaction("read")
async def read_audit_event(event_id: str, fhir: Fhir) -> Response:
    """One audit event."""
    return await run_in_threadpool(_read_sync, fhir, event_id)


async def _refuse(fhir: FhirCall) -> Response:
    raise ReadOnly("AuditEvent is written by the archive only")


@router.post("")
@interaction("create")
async def create_audit_event(fhir: Fhir) -> Response:
    """Refused (405): the archive writes its audit trail itself."""
    return await _refuse(fhir)


@router.put("/{event_id}")
@interaction("update")
async def update_audit_event(event_id: str, fhir: Fhir) -> Response:
    """Refused (405)."""
    return await _refuse(fhir)


@router.delete("/{event_id}")
@interaction("delete")
async def delete_audit_event(event_id: str, fhir: Fhir) -> Response:
    """Refused (405)."""
    return await _refuse(fhir)
