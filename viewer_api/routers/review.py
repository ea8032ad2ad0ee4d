"""``/api/review/{result}``: a radiologist's sign-off of an AI result.

GET: the findings (measurements with the AI's values, their Observations and statuses) and
the decision once signed. POST: accept / reject / amend each finding, a conclusion, sign:
the DiagnosticReport becomes ``final`` (``cancelled`` if the report is rejected), a verified
SR is stored in the study, the decision is recorded with who and when (``pacs.emr.review``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from pacs.audit.lookup import patient_of_study
from pacs.emr.feed import base_url
from pacs.emr.report import load_result
from pacs.emr.review import (
    Decision,
    FindingDecision,
    ReviewError,
    ReviewNotFound,
    review_view,
    sign_off,
)
from pacs.fhir.errors import FhirError
from pacs.query import catalog
from pacs.security.imaging import imaging_scope
from pacs.security.subject import Subject, SubjectKind
from viewer_api.deps import (
    AuditDep,
    EngineDep,
    FhirStoreDep,
    IngestDep,
    SessionDep,
    SettingsDep,
    SubjectDep,
)

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
    organisation: str = Field(
        "", max_length=128, description="Ignored unless empty or the signer's own organisation."
    )
    practitioner: str | None = Field(
        None,
        max_length=128,
        description="Ignored unless the signer's own Practitioner/<id>: a radiologist signs "
        "in their own name only (the token's practitioner, else one made from the user name).",
    )


class Finding(BaseModel):
    """One finding: the reviewed value, the AI's value, its Observation and status."""

    code: str
    display: str
    value: Any
    unit: str | None
    ai_value: Any
    status: str
    observation: str


class SignedDecision(BaseModel):
    """The decision once signed: who, when, on which findings, and the verified SR."""

    decision: str
    signer: str
    practitioner: str
    organisation: str
    signed_at: str
    findings: list[dict[str, Any]]
    conclusion: str
    sr_sop_instance_uid: str


class Review(BaseModel):
    """An AI result for review: its DiagnosticReport, findings and (once signed) decision."""

    result: int
    study_instance_uid: str
    analysis: str
    status: str
    diagnostic_report: str
    conclusion: str
    findings: list[Finding]
    grades: dict[str, str]
    decision: SignedDecision | None


def _fail(exc: ReviewError | FhirError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _signer(subject: Subject, body: ReviewBody) -> tuple[str | None, str]:
    """The signer's Practitioner reference (None: made from the user name) and organisation:
    the subject's own; 403 when the body names someone else. The local user of
    ``PACS_AUTH=none`` (no identity to check against) signs as the body says."""
    if subject.kind is SubjectKind.LOCAL:
        return body.practitioner, body.organisation
    own = subject.practitioner
    reference = own if not own or own.startswith("Practitioner/") else f"Practitioner/{own}"
    if body.practitioner and body.practitioner != reference:
        raise HTTPException(403, "a radiologist signs in their own name only")
    if body.organisation and body.organisation != subject.organisation:
        raise HTTPException(403, "a radiologist signs for their own organisation only")
    return reference or None, subject.organisation


def _check_reach(session: Session, subject: Subject, result: int) -> None:
    """ReviewNotFound unless AI result ``result`` exists and its study is within the
    subject's reach."""
    scope = imaging_scope(subject)
    found = load_result(session, result)
    if found is None or (
        scope is not None
        and catalog.find_study(session, str(found["study_instance_uid"]), scope) is None
    ):
        raise ReviewNotFound(f"AI result {result} does not exist")


@router.get("/{result}")
def get_review(
    result: int,
    session: SessionDep,
    audit: AuditDep,
    store: FhirStoreDep,
    settings: SettingsDep,
    engine: EngineDep,
    subject: SubjectDep,
) -> Review:
    """The findings of AI result ``result`` and, once signed, the decision (404 when its
    study is not within the caller's reach)."""
    try:
        _check_reach(session, subject, result)
        view = review_view(session, store, result, base_url(settings))
    except (ReviewError, FhirError) as exc:
        session.rollback()
        audit("read", exc.status)
        raise _fail(exc) from None
    study = str(view.get("study_instance_uid", ""))
    audit("read", study=study, patient=patient_of_study(engine, study))
    return Review.model_validate(view)


@router.post("/{result}")
async def post_review(
    result: int,
    body: ReviewBody,
    session: SessionDep,
    audit: AuditDep,
    store: FhirStoreDep,
    settings: SettingsDep,
    ingest: IngestDep,
    subject: SubjectDep,
) -> Review:
    """Sign off AI result ``result`` in the caller's own name (403 for another's; 409 if
    already signed, 422 for a decision that does not fit the result, 404 for an unknown
    result or one outside the caller's reach; nothing changes on any error). The sign-off's
    audit record is written in its own transaction (``pacs.emr.review``)."""
    practitioner, organisation = _signer(subject, body)
    decision = Decision(
        decision=body.decision,
        conclusion=body.conclusion,
        findings=[FindingDecision(f.code, f.action, f.value) for f in body.findings],
        organisation=organisation,
        practitioner=practitioner,
    )
    try:
        _check_reach(session, subject, result)
        session.rollback()  # end the read before the sign-off's own transaction
        view = await run_in_threadpool(
            sign_off,
            session,
            store,
            ingest,
            result,
            decision,
            audit.user,
            audit.client_address,
            base_url(settings),
        )
    except (ReviewError, FhirError) as exc:
        session.rollback()
        audit("sign", exc.status)
        raise _fail(exc) from None
    return Review.model_validate(view)
