"""``/api/quarantine``: objects held for a patient identity conflict (administrators only).

``GET /api/quarantine`` lists the entries (``?study=`` one study's); ``POST
/api/quarantine/{id}/release`` ingests one again (``?as_new_study=true``: with new UIDs) and
answers 200 when it is archived, 409 with the reason while the conflict remains; ``POST
/api/quarantine/{id}/discard`` deletes it. See ``pacs.ingest.release`` for what each means.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pacs.ingest.quarantine import QuarantineError, list_held
from pacs.ingest.release import discard, release
from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, IngestDep, SessionDep, User

router = APIRouter(prefix="/api/quarantine", tags=["quarantine"])


def _require_admin(user: User) -> None:
    if "admin" not in user.roles:
        raise HTTPException(403, "the quarantine is for administrators")


@router.get("")
def list_quarantine(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    ingest: IngestDep,
    study: Annotated[str | None, Query(max_length=64, description="StudyInstanceUID")] = None,
) -> dict[str, Any]:
    """Every held object, oldest first, with the patient it names and why it is held."""
    _require_admin(user)
    entries = [held.as_json() for held in list_held(ingest.engine, study)]
    record_access(session, request, user, "search")
    return {"entries": entries}


@router.post("/{entry}/release")
async def release_entry(
    entry: int,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    ingest: IngestDep,
    as_new_study: Annotated[bool, Query(description="Give it new Study/Series/SOP UIDs")] = False,
) -> JSONResponse:
    """Ingest the held object again; 409 (still held) while its identity conflict remains."""
    _require_admin(user)
    try:
        done = await run_in_threadpool(release, ingest, entry, as_new_study)
    except QuarantineError as exc:
        raise HTTPException(404, str(exc)) from None
    status = 200 if done.released else 409
    await run_in_threadpool(record_access, session, request, user, "update", status)
    outcome = done.outcome
    body = {
        "entry": entry,
        "released": done.released,
        "status": str(outcome.status),
        "reason": outcome.reason,
        "study_instance_uid": outcome.study_instance_uid,
        "sop_instance_uid": outcome.sop_instance_uid,
    }
    return JSONResponse(body, status_code=status)


@router.post("/{entry}/discard")
async def discard_entry(
    entry: int, request: Request, session: SessionDep, user: CurrentUser, ingest: IngestDep
) -> dict[str, Any]:
    """Delete the held object and its entry."""
    _require_admin(user)
    try:
        held = await run_in_threadpool(discard, ingest, entry)
    except QuarantineError as exc:
        raise HTTPException(404, str(exc)) from None
    await run_in_threadpool(record_access, session, request, user, "delete")
    return {"entry": entry, "discarded": True, "sop_instance_uid": held.sop_instance_uid}
