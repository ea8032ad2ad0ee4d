"""Exception handlers for failures no router answers itself: the index database being
unreachable (503 with a reason and ``Retry-After``, never a raw 500) and values too large for
the database (400). Under ``/fhir`` the body is an OperationOutcome."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pacs.fhir.errors import operation_outcome
from viewer_api.fhir_http import fhir_response

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
"""What a client is told to wait before retrying after a 503."""


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
    app.add_exception_handler(PoolTimeout, database_unavailable)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(OverflowError, out_of_range)


def _answer(request: Request, status: int, detail: str, code: str) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    if request.url.path.startswith("/fhir"):
        return fhir_response(operation_outcome(detail, code=code), status, headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """503: the index database did not answer (down, unreachable, out of connections)."""
    log.error("index database unavailable on %s: %s", request.url.path, type(exc).__name__)
    return _answer(request, 503, "the index database is unavailable; retry later", "transient")


async def database_error(request: Request, exc: Exception) -> Response:
    """A database error of another kind: 400 for a value the database cannot hold (e.g. an
    integer over 64 bits), 503 for a connection lost mid-request, 500 otherwise."""
    if isinstance(exc, DataError):
        return await out_of_range(request, exc)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await database_unavailable(request, exc)
    log.error("index database error on %s", request.url.path, exc_info=exc)
    return _answer(request, 500, "internal error in the index database", "exception")


async def out_of_range(request: Request, exc: Exception) -> Response:
    """400: a value (an id, an offset) is out of the range the index can hold."""
    return _answer(
        request, 400, "a number in the request is out of range (at most 2**63 - 1)", "value"
    )
