"""FHIR R4 RESTful API at ``/fhir``: read, vread, create, update, delete, history, search,
``transaction``/``batch`` and the CapabilityStatement. Every request is audited."""

from __future__ import annotations

import re
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from pacs.fhir.capability import capability_statement
from pacs.fhir.errors import InvalidResource, InvalidSearch
from pacs.fhir.everything import everything
from pacs.fhir.resources import Resource
from pacs.fhir.store import check_type
from viewer_api.deps import CurrentUser, SessionDep
from viewer_api.fhir_http import (
    base_url,
    fhir_response,
    fhir_store,
    handle,
    minimal_return,
    read_form,
    read_json,
    resource_headers,
    strict_handling,
)

router = APIRouter(prefix="/fhir", tags=["fhir"])

_OPERATION = re.compile(r"^/fhir/(?:([A-Z][A-Za-z]+)/(?:\{[^}]+\}/)?)?\$([a-z][a-z0-9-]*)$")


def _operations(request: Request) -> dict[str, list[str]]:
    """Operations (``$name`` routes) the app really serves, by resource type ("" system)."""
    found: dict[str, list[str]] = {}
    for route in router.routes:  # FastAPI 0.165 nests included routers in app.routes
        match = _OPERATION.match(getattr(route, "path", ""))
        if match:
            found.setdefault(match[1] or "", []).append(match[2])
    return found


def _search_params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _written(request: Request, resource: dict[str, Any], status: int) -> Response:
    headers = resource_headers(resource, base_url(request), location=True)
    return fhir_response(None if minimal_return(request) else resource, status, headers)


@router.get("/metadata")
async def metadata(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    """The CapabilityStatement, generated from what the server implements."""

    async def work() -> Response:
        return fhir_response(capability_statement(base_url(request), _operations(request)))

    return await handle(request, session, user, "read", work)


@router.post("")
@router.post("/", include_in_schema=False)
async def transaction_or_batch(
    request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """A ``transaction`` (all or nothing) or ``batch`` Bundle."""

    async def work() -> Response:
        bundle = await read_json(request)
        store = fhir_store(request)
        result = await run_in_threadpool(store.process_bundle, bundle, base_url(request))
        return fhir_response(result)

    return await handle(request, session, user, "update", work)


@router.get("/{resource_type}")
async def search_type(
    resource_type: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Search (GET); unknown parameters are ignored and reported unless
    ``Prefer: handling=strict`` (then 400)."""

    async def work() -> Response:
        return await _search(request, resource_type, _search_params(request))

    return await handle(request, session, user, "search", work)


@router.post("/{resource_type}/_search")
async def search_post(
    resource_type: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Search with the parameters in an ``application/x-www-form-urlencoded`` body."""

    async def work() -> Response:
        check_type(resource_type)
        return await _search(request, resource_type, await read_form(request))

    return await handle(request, session, user, "search", work)


async def _search(request: Request, resource_type: str, params: list[tuple[str, str]]) -> Response:
    store = fhir_store(request)
    bundle = await run_in_threadpool(
        lambda: store.search(
            resource_type, params, strict=strict_handling(request), base_url=base_url(request)
        )
    )
    return fhir_response(bundle)


@router.post("/{resource_type}")
async def create(
    resource_type: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Create (201 + Location + ETag); ``If-None-Exist`` makes it conditional (200 with the
    one match, 412 when several match)."""

    async def work() -> Response:
        check_type(resource_type)
        resource = await read_json(request)
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            got = resource.get("resourceType") if isinstance(resource, dict) else None
            raise InvalidResource(
                f"resourceType {got!r} does not match the URL ({resource_type})",
                expression=["resourceType"],
            )
        store = fhir_store(request)
        written = await run_in_threadpool(
            store.create_written, resource, request.headers.get("if-none-exist")
        )
        return _written(request, written.resource, written.status)

    return await handle(request, session, user, "create", work)


@router.put("/{resource_type}")
async def conditional_update(
    resource_type: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Conditional update: ``PUT Type?criteria`` updates the one match or creates."""

    async def work() -> Response:
        check_type(resource_type)
        params = _search_params(request)
        if not params:
            raise InvalidSearch("PUT on a type needs search criteria (conditional update)")
        resource = await read_json(request)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": resource,
                    "request": {"method": "PUT", "url": f"{resource_type}?{request.url.query}"},
                }
            ],
        }
        store = fhir_store(request)
        result = await run_in_threadpool(store.process_bundle, bundle, base_url(request))
        entry = result["entry"][0]
        written = cast(Resource, entry["resource"])  # a PUT's entry: the stored resource
        return _written(request, written, int(entry["response"]["status"][:3]))

    return await handle(request, session, user, "update", work)


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(
    patient_id: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """``Patient/$everything`` (``_type`` to narrow): the patient's case (pacs.fhir.everything)."""

    async def work() -> Response:
        types = {t for v in request.query_params.getlist("_type") for t in v.split(",") if t}
        store, base = fhir_store(request), base_url(request)
        bundle = await run_in_threadpool(everything, store, patient_id, types or None, base)
        return fhir_response(bundle)

    return await handle(request, session, user, "read", work)


@router.get("/{resource_type}/{resource_id}")
async def read(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Read the current version (404 unknown, 410 deleted)."""

    async def work() -> Response:
        resource = await run_in_threadpool(fhir_store(request).read, resource_type, resource_id)
        headers = resource_headers(resource, base_url(request), location=False)
        return fhir_response(resource, 200, headers)

    return await handle(request, session, user, "read", work)


@router.put("/{resource_type}/{resource_id}")
async def update(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Update (or create with this id: 201); ``If-Match: W/"n"`` -> 412 on another version."""

    async def work() -> Response:
        check_type(resource_type)
        resource = await read_json(request)
        store = fhir_store(request)
        written = await run_in_threadpool(
            store.update_written,
            resource_type,
            resource_id,
            resource,
            request.headers.get("if-match"),
        )
        return _written(request, written.resource, written.status)

    return await handle(request, session, user, "update", work)


@router.delete("/{resource_type}/{resource_id}")
async def delete(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Delete (204); 409 while other resources refer to it."""

    async def work() -> Response:
        await run_in_threadpool(fhir_store(request).delete, resource_type, resource_id)
        return Response(status_code=204)

    return await handle(request, session, user, "delete", work)


@router.get("/{resource_type}/{resource_id}/_history")
async def history(
    resource_type: str, resource_id: str, request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """Instance history, newest first."""

    async def work() -> Response:
        store = fhir_store(request)
        bundle = await run_in_threadpool(
            store.history, resource_type, resource_id, base_url(request)
        )
        return fhir_response(bundle)

    return await handle(request, session, user, "read", work)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(
    resource_type: str,
    resource_id: str,
    version_id: str,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
) -> Response:
    """One version (410 if that version is a deletion)."""

    async def work() -> Response:
        store = fhir_store(request)
        resource = await run_in_threadpool(store.vread, resource_type, resource_id, version_id)
        headers = resource_headers(resource, base_url(request), location=False)
        return fhir_response(resource, 200, headers)

    return await handle(request, session, user, "read", work)
