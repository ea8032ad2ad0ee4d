"""HTTP plumbing of the FHIR API: bodies, media types, headers, OperationOutcome responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from pacs.config import Settings
from pacs.fhir.errors import (
    FhirError,
    InvalidResource,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from pacs.fhir.store import FhirStore
from pacs.security.subject import Subject
from viewer_api.audit import AuditTrail
from viewer_api.negotiation import media_ranges, parse_media_type

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class FhirCall:
    """One FHIR request: the store, the base URL clients see, the body limit, the audit
    (``noted``: the patient / study / resource the endpoint found, for the audit record) and
    the caller."""

    request: Request
    store: FhirStore
    settings: Settings
    audit: AuditTrail
    subject: Subject  # the caller: pacs.security.policy decides each interaction
    noted: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The FHIR base URL as clients see it (``PACS_PUBLIC_BASE_URL`` or the request's)."""
        public = self.settings.public_base_url
        root = public.rstrip("/") if public else str(self.request.base_url).rstrip("/")
        return f"{root}/fhir"

    async def answer(self, action: str, work: Callable[[], Awaitable[Response]]) -> Response:
        """Run ``work``; a ``FhirError`` becomes its status and OperationOutcome. Audited as
        ``action`` with the status answered."""
        try:
            check_format(self.request)
            response = await work()
        except FhirError as exc:
            response = fhir_response(exc.outcome, exc.status)
        await run_in_threadpool(lambda: self.audit(action, response.status_code, **self.noted))
        return response


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


async def read_body(request: Request, limit: int, form: bool = False) -> bytes:
    """The request body, refused with 413 above ``fhir_max_body_bytes`` (before it is read
    when Content-Length says so) and with 415 unless it is FHIR JSON (or a form for
    ``_search``)."""
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


async def read_json(call: FhirCall) -> Any:
    """The request body parsed as JSON; 400 with the position of a syntax error."""
    body = await read_body(call.request, call.settings.fhir_max_body_bytes)
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


async def read_form(call: FhirCall) -> list[tuple[str, str]]:
    """The parameters of a ``POST _search``: form body, then the URL's query."""
    request = call.request
    body = await read_body(request, call.settings.fhir_max_body_bytes, form=True)
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
