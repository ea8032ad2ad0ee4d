"""``/api/jobs`` (list, filter, cancel, re-run analysis jobs) and ``/api/rules``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from pacs.jobs import queue
from pacs.jobs.rules import RuleBook, RulesError
from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, SessionDep

router = APIRouter(tags=["jobs"])

Status = Annotated[str | None, Query(pattern="^(" + "|".join(queue.STATUSES) + ")$")]


@router.get("/api/jobs")
def list_jobs(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    status: Status = None,
    analysis: Annotated[str | None, Query(max_length=64)] = None,
    study: Annotated[str | None, Query(max_length=64, description="StudyInstanceUID")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Jobs, newest first, with the queue's counts per status."""
    engine = request.app.state.engine
    jobs = queue.list_jobs(
        engine,
        status=status,
        analysis=analysis,
        study_instance_uid=study,
        limit=limit,
        offset=offset,
    )
    record_access(session, request, user, "search")
    return {"jobs": jobs, "queue": queue.queue_stats(engine)}


@router.get("/api/jobs/{job_id}")
def get_job(job_id: int, request: Request, session: SessionDep, user: CurrentUser) -> Any:
    """One job; 404 if there is none."""
    try:
        job = queue.get_job(request.app.state.engine, job_id)
    except queue.JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    record_access(session, request, user, "read")
    return job


def _operate(action: str, job_id: int, request: Request, session: Any, user: Any) -> Any:
    operation = queue.cancel if action == "cancel" else queue.retry
    try:
        job = operation(request.app.state.engine, job_id)
    except queue.JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except queue.JobStateError as exc:
        raise HTTPException(409, str(exc)) from None
    record_access(session, request, user, "update")
    return job


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(job_id: int, request: Request, session: SessionDep, user: CurrentUser) -> Any:
    """Cancel: a waiting job at once, a running one at its next heartbeat; 409 if it ended."""
    return _operate("cancel", job_id, request, session, user)


@router.post("/api/jobs/{job_id}/retry")
def retry_job(job_id: int, request: Request, session: SessionDep, user: CurrentUser) -> Any:
    """Queue an ended job (succeeded, failed, dead, cancelled) again; 409 if queued/running."""
    return _operate("retry", job_id, request, session, user)


def _rule_book(request: Request) -> RuleBook:
    book: RuleBook | None = getattr(request.app.state, "rules", None)
    if book is None:
        book = request.app.state.rules = RuleBook(request.app.state.settings.rules_file)
    return book


@router.get("/api/rules")
def get_rules(request: Request) -> dict[str, Any]:
    """The routing rules in force (reloaded when the file changed)."""
    book = _rule_book(request)
    book.reload_if_changed()
    rules = book.rules
    return {"source": rules.source, "rules": rules.as_json(), "last_error": book.last_error}


@router.post("/api/rules/reload", responses={422: {"description": "The file is invalid."}})
def reload_rules(request: Request) -> Any:
    """Load the rules file again; 422 with the line and reason if it is invalid (the rules
    in force stay)."""
    book = _rule_book(request)
    try:
        rules = book.reload()
    except RulesError as exc:
        return JSONResponse(
            {"detail": str(exc), "line": exc.line, "reason": exc.reason}, status_code=422
        )
    return {"source": rules.source, "rules": rules.as_json(), "last_error": ""}
