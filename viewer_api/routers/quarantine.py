"""``/api/quarantine``: objects held for a patient identity conflict (administrators only).

``GET /api/quarantine`` lists the entries (``?study=`` one study's); ``POST
/api/quarantine/{id}/release`` ingests one again (``?as_new_study=true``: with new UIDs) and
answers 200 when it is archived, 409 with the reason while the conflict remains; ``POST
/api/quarantine/{id}/discard`` deletes it. See ``pacs.ingest.release`` for what each means.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from pacs.ingest.quarantine import Held, QuarantineError, list_held
from pacs.ingest.release import discard, release
from pacs.security.subject import Subject
from viewer_api.deps import AuditDep, CurrentUser, IngestDep

router = APIRouter(prefix="/api/quarantine", tags=["quarantine"])


class HeldEntry(Held):
    """One held object: the patient it names, why it is held, where it came from."""


class HeldEntries(BaseModel):
    """Every held object, oldest first."""

    entries: list[HeldEntry]


class Released(BaseModel):
    """The outcome of a release: ``released`` false (409) while the conflict remains."""

    entry: int
    released: bool
    status: str
    reason: str
    study_instance_uid: str
    sop_instance_uid: str


class Discarded(BaseModel):
    """A discarded entry."""

    entry: int
    discarded: bool
    sop_instance_uid: str


def _require_admin(user: Subject) -> None:
    if not user.is_admin:
        raise HTTPException(403, "the quarantine is for administrators")


@router.get("")
def list_quarantine(
    user: CurrentUser,
    audit: AuditDep,
    ingest: IngestDep,
    study: Annotated[str | None, Query(max_length=64, description="StudyInstanceUID")] = None,
) -> HeldEntries:
    """Every held object, oldest first, with the patient it names and why it is held."""
    _require_admin(user)
    entries = [
        HeldEntry.model_validate(held, from_attributes=True)
        for held in list_held(ingest.engine, study)
    ]
    audit("search")
    return HeldEntries(entries=entries)


@router.post("/{entry}/release", response_model=Released, responses={409: {"model": Released}})
async def release_entry(
    entry: int,
    user: CurrentUser,
    audit: AuditDep,
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
    await run_in_threadpool(audit, "update", status)
    outcome = done.outcome
    body = Released(
        entry=entry,
        released=done.released,
        status=str(outcome.status),
        reason=outcome.reason,
        study_instance_uid=outcome.study_instance_uid,
        sop_instance_uid=outcome.sop_instance_uid,
    )
    return JSONResponse(body.model_dump(), status_code=status)


@router.post("/{entry}/discard")
async def discard_entry(
    entry: int, user: CurrentUser, audit: AuditDep, ingest: IngestDep
) -> Discarded:
    """Delete the held object and its entry."""
    _require_admin(user)
    try:
        held = await run_in_threadpool(discard, ingest, entry)
    except QuarantineError as exc:
        raise HTTPException(404, str(exc)) from None
    await run_in_threadpool(audit, "delete")
    return Discarded(entry=entry, discarded=True, sop_instance_uid=held.sop_instance_uid)
