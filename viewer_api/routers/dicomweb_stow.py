"""STOW-RS at ``/dicomweb``: ``POST /studies`` and ``POST /studies/{study}`` (PS3.18 10.5).

The request body (``multipart/related; type="application/dicom"``) is read as it streams in
and spooled (in memory while small, then on disk); only a complete, well-formed body is
stored, one part at a time, each through the shared ingest path in the threadpool. The answer
is a DICOM JSON Store Instances Response with 200 / 202 / 409, or 400 (malformed body),
406 (Accept excludes DICOM JSON), 415 (another media type). Every request is audited as ``create``.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pacs.config import Settings
from pacs.ingest import IngestService, Source
from pacs.security.subject import Subject
from pacs.storage import is_valid_uid
from viewer_api.audit import AuditTrail
from viewer_api.deps import AuditDep, IngestDep, SettingsDep, SubjectDep
from viewer_api.dicomweb_paths import dicomweb_base
from viewer_api.multipart import (
    MultipartError,
    SpooledPart,
    TooManyParts,
    boundary_of,
    spool_parts,
)
from viewer_api.negotiation import DICOM, DICOM_JSON, accepts, parse_media_type
from viewer_api.stow import (
    PartResult,
    http_status,
    response_dataset,
    response_json,
    store_part,
    warning_header,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

SPOOL_IN_MEMORY = 8 * 1024**2  # bytes of a request body kept in memory before spilling to disk

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "Every instance stored", "content": {DICOM_JSON: {}}},
    202: {"description": "Some failed, or warnings", "content": {DICOM_JSON: {}}},
    400: {"description": "Malformed multipart body or Study Instance UID"},
    409: {"description": "No instance stored", "content": {DICOM_JSON: {}}},
    406: {"description": "Accept does not allow application/dicom+json"},
    415: {"description": "Not multipart/related; type=application/dicom"},
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


@router.post("/studies", responses=_RESPONSES, openapi_extra=_BODY)
async def store_instances(
    request: Request,
    audit: AuditDep,
    ingest: IngestDep,
    settings: SettingsDep,
    subject: SubjectDep,
) -> JSONResponse:
    """Store the instances of the multipart body, of any studies."""
    return await _stow(request, audit, ingest, settings, subject, None)


@router.post("/studies/{study}", responses=_RESPONSES, openapi_extra=_BODY)
async def store_study_instances(
    study: Annotated[str, Path(description="Study Instance UID every instance must have")],
    request: Request,
    audit: AuditDep,
    ingest: IngestDep,
    settings: SettingsDep,
    subject: SubjectDep,
) -> JSONResponse:
    """Store the instances of the multipart body; instances of another study are refused."""
    return await _stow(request, audit, ingest, settings, subject, study)


async def _stow(
    request: Request,
    audit: AuditTrail,
    ingest: IngestService,
    settings: Settings,
    subject: Subject,
    study: str | None,
) -> JSONResponse:
    response = await _answer(request, ingest, settings, subject.organisation, study)
    await run_in_threadpool(lambda: audit("create", response.status_code, study=study or ""))
    return response


async def _answer(
    request: Request,
    ingest: IngestService,
    settings: Settings,
    organisation: str,
    study: str | None,
) -> JSONResponse:
    """Store the body's instances as sent by ``organisation`` (the caller's: the
    ``source_organisation`` of their series)."""
    if study is not None and not is_valid_uid(study):
        return _error(400, "the Study Instance UID in the path is not a valid UID")
    if not accepts(request.headers.get("accept", ""), DICOM_JSON, "application/json"):
        return _error(406, f"the response is {DICOM_JSON}; Accept does not allow it")
    media_type, params = parse_media_type(request.headers.get("content-type", ""))
    if media_type != "multipart/related":
        return _error(415, 'expected multipart/related; type="application/dicom"')
    root_type = params.get("type", DICOM).lower()
    if root_type != DICOM:
        return _error(415, f"only type={DICOM} is supported")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        try:
            boundary = boundary_of(params)
            parts = await spool_parts(
                request.stream(), boundary, ingest.max_object_size, spool, settings.stow_max_parts
            )
        except TooManyParts as exc:
            return _error(413, f"{exc} in one request (stow_max_parts); send several requests")
        except MultipartError as exc:
            return _error(400, f"malformed multipart body: {exc}")
        except ClientDisconnect:
            return _error(400, "the client disconnected before the end of the body")
        host = request.client.host if request.client else ""
        source = Source(channel="stow", host=host, organisation=organisation)
        results = await run_in_threadpool(_store_all, ingest, parts, spool, source, study)
    status = http_status(results)
    stored = sum(1 for r in results if r.stored)
    log.info("STOW-RS from %s: %d of %d stored", source.host, stored, len(results))
    base = dicomweb_base(request, settings.public_base_url)
    body = response_json(response_dataset(results, base, study))
    warning = warning_header(results)
    return JSONResponse(
        body,
        status_code=status,
        media_type=DICOM_JSON,
        headers={"Warning": warning} if warning else None,
    )


def _store_all(
    ingest: IngestService,
    parts: list[SpooledPart],
    spool: tempfile.SpooledTemporaryFile[bytes],
    source: Source,
    study: str | None,
) -> list[PartResult]:
    """Store the parts one after another (one part's bytes in memory at a time)."""
    results = []
    for number, part in enumerate(parts, start=1):
        result = _store_one(ingest, part, spool, source, study)
        if not result.stored and not result.ingested:
            log.warning("STOW-RS part %d refused: %s", number, result.reason)
        results.append(result)
    return results


def _store_one(
    ingest: IngestService,
    part: SpooledPart,
    spool: tempfile.SpooledTemporaryFile[bytes],
    source: Source,
    study: str | None,
) -> PartResult:
    """Store one part; its bytes are freed on return, before the next part is read."""
    data = part.read(spool) if part.kept else None
    return store_part(ingest, data, _part_type(part), source, study)


def _part_type(part: SpooledPart) -> str:
    """The part's media type; a part without Content-Type has the body's root type."""
    encoding = part.headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        return ""  # base64 or quoted-printable DICOM: not supported, refused as not DICOM
    return part.content_type or DICOM


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
