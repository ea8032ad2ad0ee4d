"""``/api/aes``: the registry of remote AEs (destinations of ``pacs send`` and C-MOVE)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from pacs.aes import AESpec, InvalidAEError, UnknownAEError, get_ae, list_aes, put_ae, remove_ae
from pacs.index.models import RemoteAE, as_utc
from viewer_api.deps import AuditDep, CurrentUser, SessionDep

router = APIRouter(prefix="/api/aes", tags=["aes"])


class AEBody(BaseModel):
    """What a client sends to create or update an entry."""

    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    organisation: str = Field("", max_length=128)
    description: str = Field("", max_length=255)


class AEOut(BaseModel):
    """One registered remote AE."""

    title: str
    host: str
    port: int
    organisation: str
    description: str
    created_at: datetime
    updated_at: datetime


def _out(entry: RemoteAE) -> AEOut:
    return AEOut(
        title=entry.title,
        host=entry.host,
        port=entry.port,
        organisation=entry.organisation,
        description=entry.description,
        created_at=as_utc(entry.created_at),
        updated_at=as_utc(entry.updated_at),
    )


def _invalid(exc: InvalidAEError) -> RequestValidationError:
    """A 422 in FastAPI's own error format for a value the registry refused."""
    where = "path" if exc.field == "title" else "body"
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, exc.field), "msg": str(exc), "input": None}]
    )


@router.get("")
def list_remote_aes(session: SessionDep, user: CurrentUser) -> list[AEOut]:
    """Every registered remote AE, ordered by title."""
    return [_out(entry) for entry in list_aes(session)]


@router.get("/{title}")
def get_remote_ae(title: str, session: SessionDep, user: CurrentUser) -> AEOut:
    """One registered remote AE; 404 if the title is not registered."""
    try:
        return _out(get_ae(session, title))
    except InvalidAEError as exc:
        raise _invalid(exc) from None
    except UnknownAEError as exc:
        raise HTTPException(404, str(exc)) from None


@router.put("/{title}", responses={201: {"model": AEOut}})
def put_remote_ae(
    title: str, body: AEBody, response: Response, session: SessionDep, audit: AuditDep
) -> AEOut:
    """Create (201) or update (200) the entry for ``title``."""
    try:
        spec = AESpec(title, body.host, body.port, body.organisation, body.description)
    except InvalidAEError as exc:
        raise _invalid(exc) from None
    entry, created = put_ae(session, spec)
    response.status_code = 201 if created else 200
    audit("create" if created else "update", response.status_code)
    return _out(entry)


@router.delete("/{title}", status_code=204)
def delete_remote_ae(title: str, session: SessionDep, audit: AuditDep) -> Response:
    """Remove the entry; 404 if the title is not registered."""
    try:
        remove_ae(session, title)
    except InvalidAEError as exc:
        raise _invalid(exc) from None
    except UnknownAEError as exc:
        audit("delete", 404)
        raise HTTPException(404, str(exc)) from None
    audit("delete", 204)
    return Response(status_code=204)
