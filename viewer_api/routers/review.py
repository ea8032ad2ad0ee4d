"""``/api/review/{result}``: a radiologist's sign-off of an AI result.

GET: the findings (measurements with the AI's values, their Observations and statuses) and
the decision once signed. POST: accept / reject / amend each finding, a conclusion, sign:
the DiagnosticReport becomes ``final`` (``cancelled`` if the report is rejected), a verified
SR is stored in the study, the decision is recorded with who and when (``pacs.emr.review``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pacs.emr.feed import base_url
from pacs.emr.review import Decision, FindingDecision, ReviewError, review_view, sign_off
from pacs.fhir.errors import FhirError
from pacs.fhir.store import FhirStore
from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, IngestDep, SessionDep, SettingsDep

router = APIRouter(prefix="/api/review", tags=["review"])


class FindingBody(BaseModel):
    """The decision on one finding (``code``: a measurement key, e.g. ``ct_severity_grade``)."""

    code: str = Field(min_length=1, max_length=64)
    action: Literal["accept", "reject", "amend"]
    value: float | str | None = Field(None, description="The new value of an amended finding.")


class ReviewBody(BaseModel):
    """A sign-off: ``sign`` makes the report final, ``reject`` cancels it."""

    decision: Literal["sign", "reject"]
    conclusion: str = Field(min_length=1, max_length=10_000)
    findings: list[FindingBody] = Field(
        default_factory=list, max_length=64, description="Findings not listed are accepted."
    )
    organisation: str = Field("", max_length=128, description="The signer's organisation.")
    practitioner: str | None = Field(
        None,
        max_length=128,
        description="Practitioner/<id> of the signer; default one made from the user name.",
    )


def _store(request: Request) -> FhirStore:
    store = getattr(request.app.state, "fhir_store", None)
    return store if isinstance(store, FhirStore) else FhirStore(request.app.state.engine)


def _fail(exc: ReviewError | FhirError) -> HTTPException:
    status = exc.status
    return HTTPException(status, str(exc))


@router.get("/{result}")
def get_review(
    result: int, request: Request, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> dict[str, Any]:
    """The findings of AI result ``result`` and, once signed, the decision."""
    try:
        view = review_view(session, _store(request), result, base_url(settings))
    except (ReviewError, FhirError) as exc:
        session.rollback()
        record_access(session, request, user, "read", exc.status)
        raise _fail(exc) from None
    record_access(session, request, user, "read")
    return view


@router.post("/{result}")
async def post_review(
    result: int,
    body: ReviewBody,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    ingest: IngestDep,
) -> dict[str, Any]:
    """Sign off AI result ``result`` (409 if already signed, 422 for a decision that does
    not fit the result, 404 for an unknown result; nothing changes on any error)."""
    decision = Decision(
        decision=body.decision,
        conclusion=body.conclusion,
        findings=[FindingDecision(f.code, f.action, f.value) for f in body.findings],
        organisation=body.organisation,
        practitioner=body.practitioner,
    )
    client = request.client.host if request.client else ""
    try:
        return await run_in_threadpool(
            sign_off,
            session,
            _store(request),
            ingest,
            result,
            decision,
            user.name,
            client,
            base_url(settings),
        )
    except (ReviewError, FhirError) as exc:
        session.rollback()
        record_access(session, request, user, "sign", exc.status)
        raise _fail(exc) from None
