"""``/api/jobs`` (list, filter, cancel, re-run analysis jobs) and ``/api/rules``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine

from pacs.jobs import queue
from pacs.jobs.rules import RulesError, RuleSet
from viewer_api.deps import AuditDep, CurrentUser, EngineDep, RuleBookDep

router = APIRouter(tags=["jobs"])

Status = Annotated[str | None, Query(pattern="^(" + "|".join(queue.STATUSES) + ")$")]


class Job(BaseModel):
    """One analysis job (timestamps in ISO 8601, UTC)."""

    id: int
    analysis: str
    study_instance_uid: str
    study_version: int
    series_instance_uids: list[str]
    rule: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_after: str
    lease_owner: str | None
    lease_expires_at: str | None
    heartbeat_at: str | None
    cancel_requested: bool
    error: str
    result: dict[str, Any] | None
    options: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None


class QueueStats(BaseModel):
    """Jobs per status and the age in seconds of the oldest ready job (0 if none)."""

    by_status: dict[str, int]
    oldest_ready_seconds: float


class JobList(BaseModel):
    """A page of jobs and the queue's counts."""

    jobs: list[Job]
    queue: QueueStats


class Rules(BaseModel):
    """The routing rules in force, where they come from and the last reload's error."""

    source: str
    rules: list[dict[str, Any]]
    last_error: str


class RulesRefused(BaseModel):
    """Why a rules file was refused (the rules in force stay)."""

    detail: str
    line: int
    reason: str


@router.get("/api/jobs")
def list_jobs(
    engine: EngineDep,
    audit: AuditDep,
    status: Status = None,
    analysis: Annotated[str | None, Query(max_length=64)] = None,
    study: Annotated[str | None, Query(max_length=64, description="StudyInstanceUID")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    """Jobs, newest first, with the queue's counts per status."""
    jobs = queue.list_jobs(
        engine,
        status=status,
        analysis=analysis,
        study_instance_uid=study,
        limit=limit,
        offset=offset,
    )
    audit("search")
    return JobList.model_validate({"jobs": jobs, "queue": queue.queue_stats(engine)})


@router.get("/api/jobs/{job_id}")
def get_job(job_id: int, engine: EngineDep, audit: AuditDep) -> Job:
    """One job; 404 if there is none."""
    try:
        job = queue.get_job(engine, job_id)
    except queue.JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    audit("read")
    return Job.model_validate(job)


def _operate(
    operation: Callable[[Engine, int], dict[str, Any]], job_id: int, engine: Engine, audit: AuditDep
) -> Job:
    try:
        job = operation(engine, job_id)
    except queue.JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except queue.JobStateError as exc:
        raise HTTPException(409, str(exc)) from None
    audit("update")
    return Job.model_validate(job)


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(job_id: int, engine: EngineDep, audit: AuditDep) -> Job:
    """Cancel: a waiting job at once, a running one at its next heartbeat; 409 if it ended."""
    return _operate(queue.cancel, job_id, engine, audit)


@router.post("/api/jobs/{job_id}/retry")
def retry_job(job_id: int, engine: EngineDep, audit: AuditDep) -> Job:
    """Queue an ended job (succeeded, failed, dead, cancelled) again; 409 if queued/running."""
    return _operate(queue.retry, job_id, engine, audit)


def _rules(rules: RuleSet, last_error: str) -> Rules:
    return Rules(source=rules.source, rules=rules.as_json(), last_error=last_error)


@router.get("/api/rules")
def get_rules(book: RuleBookDep, user: CurrentUser) -> Rules:
    """The routing rules in force (reloaded when the file changed)."""
    book.reload_if_changed()
    return _rules(book.rules, book.last_error)


@router.post(
    "/api/rules/reload",
    response_model=Rules,
    responses={422: {"model": RulesRefused, "description": "The file is invalid."}},
)
def reload_rules(book: RuleBookDep, audit: AuditDep) -> Rules | JSONResponse:
    """Load the rules file again; 422 with the line and reason if it is invalid (the rules
    in force stay)."""
    try:
        rules = book.reload()
    except RulesError as exc:
        audit("update", 422)
        refused = RulesRefused(detail=str(exc), line=exc.line, reason=exc.reason)
        return JSONResponse(refused.model_dump(), status_code=422)
    audit("update")
    return _rules(rules, "")
