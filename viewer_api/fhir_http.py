"""HTTP plumbing of the FHIR API: bodies, media types, headers, OperationOutcome responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from pacs.fhir.errors import (
    FhirError,
    InvalidResource,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from pacs.fhir.store import FhirStore
from viewer_api.audit import record_access
from viewer_api.deps import User
from viewer_api.negotiation import media_ranges, parse_media_type

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
_FORM = "application/x-www-form-urlencoded"


def base_url(request: Request) -> str:
    """The FHIR base URL as clients see it (``PACS_PUBLIC_BASE_URL`` or the request's)."""
    public = request.app.state.settings.public_base_url
    root = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{root}/fhir"


def fhir_store(request: Request) -> FhirStore:
    """The app's FhirStore on the index engine (made on first use)."""
    store: FhirStore | None = getattr(request.app.state, "fhir_store", None)
    if store is None:
        settings = request.app.state.settings
        store = FhirStore(
            request.app.state.engine,
            base_url=base_url(request),
            default_count=settings.fhir_default_count,
        )
        request.app.state.fhir_store = store
    return store


def fhir_response(
    body: Mapping[str, object] | None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A FHIR JSON response (``application/fhir+json; charset=utf-8``)."""
    content = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    return Response(
        content, status_code=status, headers=headers, media_type=f"{FHIR_JSON}; charset=utf-8"
    )


def resource_headers(resource: dict[str, Any], base: str, location: bool) -> dict[str, str]:
    """ETag, Last-Modified and (for writes) Location of a stored resource version."""
    meta = resource["meta"]
    modified = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    headers = {
        "ETag": f'W/"{meta["versionId"]}"',
        "Last-Modified": format_datetime(modified, usegmt=True),
    }
    if location:
        rtype, rid = resource["resourceType"], resource["id"]
        headers["Location"] = f"{base}/{rtype}/{rid}/_history/{meta['versionId']}"
    return headers


async def read_body(request: Request, form: bool = False) -> bytes:
    """The request body, refused with 413 above ``fhir_max_body_bytes`` (before it is read
    when Content-Length says so) and with 415 unless it is FHIR JSON (or a form for
    ``_search``)."""
    limit: int = request.app.state.settings.fhir_max_body_bytes
    media, _params = parse_media_type(request.headers.get("content-type", ""))
    allowed = {_FORM} if form else _JSON_TYPES
    if media and media not in allowed:
        raise UnsupportedMediaType(f"Content-Type {media!r} is not accepted here")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body ({declared} bytes) is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON; 400 with the position of a syntax error."""
    body = await read_body(request)
    if not body.strip():
        raise InvalidResource("the request body is empty")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidResource("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidResource(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InvalidResource("the JSON is nested too deeply") from None


async def read_form(request: Request) -> list[tuple[str, str]]:
    """The parameters of a ``POST _search``: form body, then the URL's query."""
    body = await read_body(request, form=True)
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise InvalidResource("the form body is not UTF-8") from None
    return params + list(request.query_params.multi_items())


def strict_handling(request: Request) -> bool:
    """``Prefer: handling=strict``."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip() == "handling=strict" for p in prefer.split(","))


def minimal_return(request: Request) -> bool:
    """``Prefer: return=minimal``."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip() == "return=minimal" for p in prefer.split(","))


def check_format(request: Request) -> None:
    """406 when ``_format`` or ``Accept`` asks only for something other than JSON."""
    wanted = request.query_params.get("_format", "")
    if wanted and "json" not in wanted.lower():
        raise NotAcceptable(f"_format={wanted}: this server answers JSON only")
    accept = request.headers.get("accept", "")
    types = [r.media_type for r in media_ranges(accept)]
    if accept.strip() and not any("json" in t or t in ("*/*", "application/*") for t in types):
        raise NotAcceptable(f"Accept: {accept}: this server answers application/fhir+json only")


async def handle(
    request: Request,
    session: Session,
    user: User,
    action: str,
    work: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``work``; a ``FhirError`` becomes its status and OperationOutcome. Audited."""
    try:
        check_format(request)
        response = await work()
    except FhirError as exc:
        response = fhir_response(exc.outcome, exc.status)
    await run_in_threadpool(record_access, session, request, user, action, response.status_code)
    return response
