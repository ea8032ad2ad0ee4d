"""FHIR R4 RESTful API at ``/fhir``: read, vread, create, update, delete, history, search and
``transaction``/``batch`` (the CapabilityStatement, public: ``viewer_api.routers.smart``).
Every request is audited.

Each endpoint is one FHIR interaction: ``@interaction(action)`` turns a ``FhirError`` it
raises into its status and OperationOutcome and records the request in the audit trail."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import ColumnElement
from starlette.concurrency import run_in_threadpool

from pacs.audit.compartment import patient_by_id, patient_of
from pacs.fhir.errors import FhirError, Forbidden, InvalidResource, InvalidSearch, ResourceNotFound
from pacs.fhir.everything import everything
from pacs.fhir.resources import Resource
from pacs.fhir.store import check_type
from pacs.security.fhir_scope import fhir_scope
from pacs.security.policy import Action, fhir_decision, scope_permits
from pacs.security.subject import Role
from viewer_api.deps import AuditDep, FhirStoreDep, SettingsDep, SubjectDep
from viewer_api.fhir_http import (
    FhirCall,
    fhir_response,
    minimal_return,
    read_form,
    read_json,
    resource_headers,
    strict_handling,
)

router = APIRouter(prefix="/fhir", tags=["fhir"])

_OPERATION = re.compile(r"^/fhir/(?:([A-Z][A-Za-z]+)/(?:\{[^}]+\}/)?)?\$([a-z][a-z0-9-]*)$")


def _fhir_call(
    request: Request,
    store: FhirStoreDep,
    settings: SettingsDep,
    audit: AuditDep,
    subject: SubjectDep,
) -> FhirCall:
    return FhirCall(request, store, settings, audit, subject)


Fhir = Annotated[FhirCall, Depends(_fhir_call)]
Endpoint = Callable[..., Awaitable[Response]]


def interaction(action: str) -> Callable[[Endpoint], Endpoint]:
    """Wrap an endpoint taking ``fhir: Fhir``: errors as OperationOutcome, audited as
    ``action`` (read, search, create, update, delete)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)  # FastAPI reads the endpoint's own signature
        async def audited(**kwargs: Any) -> Response:
            call: FhirCall = kwargs["fhir"]
            return await call.answer(action, lambda: endpoint(**kwargs))

        return audited

    return decorate


def operations() -> dict[str, list[str]]:
    """Operations (``$name`` routes) the app really serves, by resource type ("" system)."""
    found: dict[str, list[str]] = {}
    for route in router.routes:  # FastAPI 0.165 nests included routers in app.routes
        match = _OPERATION.match(getattr(route, "path", ""))
        if match:
            found.setdefault(match[1] or "", []).append(match[2])
    return found


def _allow(fhir: FhirCall, action: Action, resource_type: str) -> ColumnElement[bool] | None:
    """403 unless the policy allows ``action`` on ``resource_type``; the caller's reach over
    that type (None: every resource)."""
    check_type(resource_type)
    decision = fhir_decision(fhir.subject, action, resource_type)
    if not decision:
        raise Forbidden(decision.reason)
    return fhir_scope(fhir.subject, resource_type)


async def _reached(fhir: FhirCall, action: Action, resource_type: str, resource_id: str) -> None:
    """``_allow``, and 404 when the resource is stored but outside the caller's reach."""
    scope = _allow(fhir, action, resource_type)
    if await run_in_threadpool(fhir.store.outside, resource_type, resource_id, scope):
        raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")


async def _own_patient(fhir: FhirCall, resource: Any) -> None:
    """A patient writes only in their own compartment (their Consent): 403 otherwise."""
    subject = fhir.subject
    if not subject.has(Role.PATIENT) or subject.is_admin:
        return
    ref = resource.get("patient") or resource.get("subject") if isinstance(resource, dict) else None
    kind, _, patient = str((ref or {}).get("reference") or "").partition("/")
    scope = fhir_scope(subject, "Patient")
    if kind != "Patient" or not patient:
        raise Forbidden("a patient writes resources of their own record only")
    try:
        await run_in_threadpool(fhir.store.read, "Patient", patient, scope)
    except FhirError:
        raise Forbidden("a patient writes resources of their own record only") from None


def _search_params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _written(fhir: FhirCall, resource: dict[str, Any], status: int) -> Response:
    headers = resource_headers(resource, fhir.base, location=True)
    return fhir_response(None if minimal_return(fhir.request) else resource, status, headers)


def _read(fhir: FhirCall, resource: dict[str, Any]) -> Response:
    return fhir_response(resource, 200, resource_headers(resource, fhir.base, location=False))


@router.post("")
@router.post("/", include_in_schema=False)
@interaction("update")
async def transaction_or_batch(fhir: Fhir) -> Response:
    """A ``transaction`` (all or nothing) or ``batch`` Bundle: administrators, and systems
    with read and write scopes on every type (entries are not decided one by one)."""
    subject = fhir.subject
    every = all(scope_permits(subject, "*", a) for a in (Action.READ, Action.WRITE))
    if not subject.is_admin and not every:
        raise Forbidden("transaction and batch need administrator or system/*.cruds access")
    bundle = await read_json(fhir)
    result = await run_in_threadpool(fhir.store.process_bundle, bundle, fhir.base)
    return fhir_response(result)


@router.get("/{resource_type}")
@interaction("search")
async def search_type(resource_type: str, fhir: Fhir) -> Response:
    """Search (GET); unknown parameters are ignored and reported unless
    ``Prefer: handling=strict`` (then 400)."""
    return await _search(fhir, resource_type, _search_params(fhir.request))


@router.post("/{resource_type}/_search")
@interaction("search")
async def search_post(resource_type: str, fhir: Fhir) -> Response:
    """Search with the parameters in an ``application/x-www-form-urlencoded`` body."""
    check_type(resource_type)
    return await _search(fhir, resource_type, await read_form(fhir))


async def _search(fhir: FhirCall, resource_type: str, params: list[tuple[str, str]]) -> Response:
    scope = _allow(fhir, Action.SEARCH, resource_type)
    named = [v for k, v in params if k in ("patient", "subject") and v.startswith("Patient/")]
    if named:  # a search in one patient's compartment
        patient_id = named[0].removeprefix("Patient/")
        fhir.noted["patient"] = await run_in_threadpool(patient_by_id, fhir.store, patient_id)
    strict = strict_handling(fhir.request)
    bundle = await run_in_threadpool(
        lambda: fhir.store.search(
            resource_type, params, strict=strict, base_url=fhir.base, scope=scope
        )
    )
    return fhir_response(bundle)


@router.post("/{resource_type}")
@interaction("create")
async def create(resource_type: str, fhir: Fhir) -> Response:
    """Create (201 + Location + ETag); ``If-None-Exist`` makes it conditional (200 with the
    one match, 412 when several match)."""
    _allow(fhir, Action.WRITE, resource_type)
    resource = await read_json(fhir)
    await _own_patient(fhir, resource)
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        got = resource.get("resourceType") if isinstance(resource, dict) else None
        raise InvalidResource(
            f"resourceType {got!r} does not match the URL ({resource_type})",
            expression=["resourceType"],
        )
    written = await run_in_threadpool(
        fhir.store.create_written, resource, fhir.request.headers.get("if-none-exist")
    )
    return _written(fhir, written.resource, written.status)


@router.put("/{resource_type}")
@interaction("update")
async def conditional_update(resource_type: str, fhir: Fhir) -> Response:
    """Conditional update: ``PUT Type?criteria`` updates the one match or creates (callers
    who reach every resource of the type only: the match is not decided one by one)."""
    if _allow(fhir, Action.WRITE, resource_type) is not None:
        raise Forbidden(f"conditional update of {resource_type} needs access to all of them")
    if not _search_params(fhir.request):
        raise InvalidSearch("PUT on a type needs search criteria (conditional update)")
    resource = await read_json(fhir)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource_type}?{fhir.request.url.query}"},
            }
        ],
    }
    result = await run_in_threadpool(fhir.store.process_bundle, bundle, fhir.base)
    entry = result["entry"][0]
    written = cast(Resource, entry["resource"])  # a PUT's entry: the stored resource
    return _written(fhir, written, int(entry["response"]["status"][:3]))


@router.get("/Patient/{patient_id}/$everything")
@interaction("read")
async def patient_everything(patient_id: str, fhir: Fhir) -> Response:
    """``Patient/$everything`` (``_type`` to narrow): the patient's case (pacs.fhir.everything)."""
    await _reached(fhir, Action.READ, "Patient", patient_id)
    wanted = fhir.request.query_params.getlist("_type")
    types = {t for v in wanted for t in v.split(",") if t}
    bundle = await run_in_threadpool(everything, fhir.store, patient_id, types or None, fhir.base)
    fhir.noted["patient"] = await run_in_threadpool(patient_by_id, fhir.store, patient_id)
    return fhir_response(bundle)


@router.get("/{resource_type}/{resource_id}")
@interaction("read")
async def read(resource_type: str, resource_id: str, fhir: Fhir) -> Response:
    """Read the current version (404 unknown or outside the caller's reach, 410 deleted)."""
    scope = _allow(fhir, Action.READ, resource_type)
    resource = await run_in_threadpool(fhir.store.read, resource_type, resource_id, scope)
    fhir.noted["patient"] = await run_in_threadpool(patient_of, fhir.store, resource)
    return _read(fhir, resource)


@router.put("/{resource_type}/{resource_id}")
@interaction("update")
async def update(resource_type: str, resource_id: str, fhir: Fhir) -> Response:
    """Update (or create with this id: 201); ``If-Match: W/"n"`` -> 412 on another version."""
    await _reached(fhir, Action.WRITE, resource_type, resource_id)
    resource = await read_json(fhir)
    await _own_patient(fhir, resource)
    written = await run_in_threadpool(
        fhir.store.update_written,
        resource_type,
        resource_id,
        resource,
        fhir.request.headers.get("if-match"),
    )
    return _written(fhir, written.resource, written.status)


@router.delete("/{resource_type}/{resource_id}")
@interaction("delete")
async def delete(resource_type: str, resource_id: str, fhir: Fhir) -> Response:
    """Delete (204); 409 while other resources refer to it."""
    await _reached(fhir, Action.DELETE, resource_type, resource_id)
    await run_in_threadpool(fhir.store.delete, resource_type, resource_id)
    return Response(status_code=204)


@router.get("/{resource_type}/{resource_id}/_history")
@interaction("read")
async def history(resource_type: str, resource_id: str, fhir: Fhir) -> Response:
    """Instance history, newest first."""
    await _reached(fhir, Action.READ, resource_type, resource_id)
    bundle = await run_in_threadpool(fhir.store.history, resource_type, resource_id, fhir.base)
    return fhir_response(bundle)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
@interaction("read")
async def vread(resource_type: str, resource_id: str, version_id: str, fhir: Fhir) -> Response:
    """One version (410 if that version is a deletion)."""
    await _reached(fhir, Action.READ, resource_type, resource_id)
    store = fhir.store
    resource = await run_in_threadpool(store.vread, resource_type, resource_id, version_id)
    fhir.noted["patient"] = await run_in_threadpool(patient_of, store, resource)
    return _read(fhir, resource)
