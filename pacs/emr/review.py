"""Sign-off of an AI result: a radiologist accepts, rejects or amends each finding, adds a
conclusion and signs. Only this turns a preliminary AI report into a final one.

On sign-off, in this order:

1. (accepted reports) a new SR, VerificationFlag VERIFIED, with the Verifying Observer, is
   stored into the study through the normal ingest path; the AI's SEG and SR stay unchanged;
2. in one database transaction: the review decision row (one per result), the Observations
   (``final``, ``amended`` with the new value, or ``cancelled``), the DiagnosticReport
   (``final``, or ``cancelled`` when the report is rejected; ``resultsInterpreter`` the
   Practitioner), the ``ai_report`` and ``ai_result`` statuses, an audit event and the change
   ``result.signed``; on a final report, the referral (the ServiceRequests the report is
   ``basedOn``, else the one with the study's accession number) becomes ``completed``, so the
   Modality Worklist no longer offers the done exam. A second sign-off of the same result is
   refused (409), and the signed result is never replaced (``inference.records``).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.orm import Session

from inference import records as ai_records
from pacs import changes
from pacs.audit import Access, append
from pacs.emr import EmrLinkError
from pacs.emr.identifiers import USER, reference_id
from pacs.emr.projection import dicomweb_endpoint, find_service_request
from pacs.emr.report import (
    GRADES,
    MEASUREMENTS,
    load_result,
    publish_result,
    result_key,
)
from pacs.emr.tables import AiReport, ReviewDecision
from pacs.fhir.errors import FhirError
from pacs.fhir.store import FhirStore
from pacs.index.models import Instance, Series, Study, as_utc
from pacs.ingest import IngestService
from pacs.ingest.source import Source
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)

ACTIONS = ("accept", "reject", "amend")
DECISIONS = {"sign": "final", "reject": "cancelled"}
"""Decision of the request -> status of the DiagnosticReport."""
_OBSERVATION_STATUS = {"accept": "final", "amend": "amended", "reject": "cancelled"}


class ReviewError(EmrLinkError):
    """A sign-off that cannot be made; ``status`` is the HTTP status to answer."""

    status = 400


class ReviewNotFound(ReviewError):
    """No such AI result."""

    status = 404


class ReviewConflict(ReviewError):
    """Already signed off, or not ready to be."""

    status = 409


class InvalidReview(ReviewError):
    """The decision does not fit the result (unknown finding, bad value, missing signer)."""

    status = 422


@dataclass(frozen=True)
class FindingDecision:
    """What the radiologist decided about one finding (``code``: a measurement key)."""

    code: str
    action: str
    value: Any = None


@dataclass(frozen=True)
class Decision:
    """A sign-off request."""

    decision: str  # "sign" or "reject"
    conclusion: str
    findings: list[FindingDecision] = field(default_factory=list)
    organisation: str = ""
    practitioner: str | None = None  # "Practitioner/<id>"; default: the signer's own


def _report(session: Session, store: FhirStore, result_pk: int, public_url: str) -> AiReport:
    if load_result(session, result_pk) is None:
        raise ReviewNotFound(f"AI result {result_pk} does not exist")
    known = session.scalar(select(AiReport).where(AiReport.result_pk == result_pk))
    if known is None:  # the feed has not got to it yet: publish it now
        publish_result(session, store, result_pk, dicomweb_endpoint(store, public_url))
        known = session.scalar(select(AiReport).where(AiReport.result_pk == result_pk))
    if known is None:
        raise ReviewConflict(f"AI result {result_pk} has no report (is its study archived?)")
    return known


def review_view(
    session: Session, store: FhirStore, result_pk: int, public_url: str
) -> dict[str, Any]:
    """The findings of an AI result for review, with the decision if it is signed off."""
    known = _report(session, store, result_pk, public_url)
    result = load_result(session, result_pk)
    assert result is not None
    report = store.read("DiagnosticReport", known.diagnostic_report_id)
    measurements = result["measurements"] or {}
    findings = []
    for key, observation_id in known.observation_ids.items():
        observation = store.read("Observation", observation_id)
        quantity = observation.get("valueQuantity")
        concept = observation.get("valueCodeableConcept")
        findings.append(
            {
                "code": key,
                "display": MEASUREMENTS[key].display,
                "value": quantity["value"] if quantity else (concept or {})["coding"][0]["code"],
                "unit": quantity["code"] if quantity else None,
                "ai_value": measurements.get(key),
                "status": observation["status"],
                "observation": f"Observation/{observation_id}",
            }
        )
    decision = session.scalar(select(ReviewDecision).where(ReviewDecision.result_pk == result_pk))
    return {
        "result": result_pk,
        "study_instance_uid": result["study_instance_uid"],
        "analysis": result["analysis"],
        "status": report["status"],
        "diagnostic_report": f"DiagnosticReport/{known.diagnostic_report_id}",
        "conclusion": report.get("conclusion", ""),
        "findings": findings,
        "grades": GRADES,
        "decision": None
        if decision is None
        else {
            "decision": decision.decision,
            "signer": decision.signer,
            "practitioner": decision.practitioner,
            "organisation": decision.organisation,
            "signed_at": as_utc(decision.signed_at).isoformat(),
            "findings": decision.findings,
            "conclusion": decision.conclusion,
            "sr_sop_instance_uid": decision.sr_sop_instance_uid,
        },
    }


def _checked_findings(
    decision: Decision, measurements: Mapping[str, Any], keys: list[str]
) -> list[dict[str, Any]]:
    """Every finding of the report with its action and reviewed value (unlisted: accepted)."""
    by_code: dict[str, FindingDecision] = {}
    for finding in decision.findings:
        if finding.code not in keys:
            raise InvalidReview(f"finding {finding.code!r} is not in this report")
        if finding.code in by_code:
            raise InvalidReview(f"finding {finding.code!r} is decided twice")
        if finding.action not in ACTIONS:
            raise InvalidReview(f"action {finding.action!r} is not one of {', '.join(ACTIONS)}")
        by_code[finding.code] = finding
    out = []
    for key in keys:
        finding = by_code.get(key, FindingDecision(key, "accept"))
        value = measurements.get(key)
        if finding.action == "amend":
            value = _amended_value(key, finding.value)
        out.append(
            {
                "code": key,
                "action": finding.action,
                "value": value,
                "ai_value": measurements.get(key),
            }
        )
    return out


def _amended_value(key: str, value: Any) -> Any:
    if MEASUREMENTS[key].unit:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidReview(f"{key}: amended value must be a number") from None
        if number < 0 or (MEASUREMENTS[key].unit == "%" and number > 100):
            raise InvalidReview(f"{key}: amended value {number} is out of range")
        return number
    if str(value) not in GRADES:
        raise InvalidReview(f"{key}: amended value must be one of {', '.join(GRADES)}")
    return str(value)


def _practitioner(store: FhirStore, decision: Decision, signer: str) -> dict[str, str]:
    if decision.practitioner:
        kind, _, pid = decision.practitioner.partition("/")
        if kind != "Practitioner" or not pid:
            raise InvalidReview("practitioner must be a reference Practitioner/<id>")
        try:
            store.read("Practitioner", pid)
        except FhirError:
            raise InvalidReview(f"{decision.practitioner} does not exist") from None
        return {"reference": decision.practitioner}
    resource = {
        "resourceType": "Practitioner",
        "identifier": [{"system": USER, "value": signer}],
        "name": [{"text": signer}],
    }
    created = store.upsert_by_identifier(resource, USER, signer)
    return {"reference": f"Practitioner/{created['id']}"}


def _evidence(session: Session, objects: ObjectStore, result: Mapping[str, Any]) -> Dataset:
    """The AI's SR (or, without one, the first image of the source series), as stored."""
    key = None
    if result.get("sr_sop_instance_uid"):
        key = session.scalar(
            select(Instance.object_key).where(
                Instance.sop_instance_uid == result["sr_sop_instance_uid"]
            )
        )
    if key is None:
        key = session.scalar(
            select(Instance.object_key)
            .join(Series, Instance.series_pk == Series.pk)
            .where(Series.series_instance_uid == result["source_series_instance_uid"])
            .order_by(Instance.instance_number, Instance.pk)
            .limit(1)
        )
    if key is None:
        raise ReviewConflict("neither the AI's SR nor the source series is in the archive")
    return dcmread(BytesIO(objects.get(key)))


def _reviewed_observation(
    current: dict[str, Any], finding: Mapping[str, Any], practitioner: dict[str, str], status: str
) -> dict[str, Any]:
    observation = copy.deepcopy(current)
    observation.pop("meta", None)
    observation["status"] = (
        _OBSERVATION_STATUS[finding["action"]] if status == "final" else "cancelled"
    )
    observation["performer"] = [practitioner]
    if finding["action"] == "amend":
        if "valueQuantity" in observation:
            observation["valueQuantity"]["value"] = round(float(finding["value"]), 2)
        else:
            code = str(finding["value"])
            observation["valueCodeableConcept"]["coding"][0].update(code=code, display=GRADES[code])
            observation["valueCodeableConcept"]["text"] = code
        observation["note"] = [
            {"text": f"Amended by the radiologist; AI value {finding['ai_value']}"}
        ]
    elif finding["action"] == "reject":
        observation["note"] = [{"text": "Rejected by the radiologist"}]
    return observation


def sign_provenance(
    report: dict[str, Any], practitioner: dict[str, str], signed_at: datetime
) -> dict[str, Any]:
    """The Provenance of a sign-off: the radiologist verified this version of the report."""
    version = report["meta"]["versionId"]
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"DiagnosticReport/{report['id']}/_history/{version}"}],
        "recorded": signed_at.isoformat(),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DocumentCompletion",
                    "code": "LA" if report["status"] == "final" else "CA",
                    "display": "legally authenticated"
                    if report["status"] == "final"
                    else "cancelled",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "provenance-participant-type",
                            "code": "verifier",
                        }
                    ]
                },
                "who": practitioner,
            }
        ],
    }


_LOCAL_SIGN_LOCK = threading.Lock()
SIGN_LOCK = 0x5349474E  # PostgreSQL advisory lock class of sign-offs ("SIGN")


@contextmanager
def _sign_lock(engine: Engine, result_pk: int) -> Iterator[None]:
    """One sign-off of a result at a time, across processes and nodes on PostgreSQL (an
    advisory lock), within the API process on SQLite (the embedded deployment has one), so
    that a losing concurrent sign-off never leaves a verified SR behind."""
    if engine.dialect.name != "postgresql":
        with _LOCAL_SIGN_LOCK:
            yield
        return
    with engine.connect() as conn:
        key = {"k1": SIGN_LOCK, "k2": result_pk}
        conn.execute(text("SELECT pg_advisory_lock(:k1, :k2)"), key)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k1, :k2)"), key)
            conn.commit()


def sign_off(
    session: Session,
    store: FhirStore,
    ingest: IngestService,
    result_pk: int,
    decision: Decision,
    signer: str,
    client_address: str,
    public_url: str,
) -> dict[str, Any]:
    """Record a radiologist's decision on an AI result (see the module docstring)."""
    status = DECISIONS.get(decision.decision)
    if status is None:
        raise InvalidReview(f"decision {decision.decision!r} is not one of {', '.join(DECISIONS)}")
    if not decision.conclusion.strip():
        raise InvalidReview("a conclusion is required")
    with _sign_lock(store.engine, result_pk):
        session.rollback()  # see what a previous holder of the lock committed
        return _sign(
            session, store, ingest, result_pk, decision, status, signer, client_address, public_url
        )


def _sign(
    session: Session,
    store: FhirStore,
    ingest: IngestService,
    result_pk: int,
    decision: Decision,
    status: str,
    signer: str,
    client_address: str,
    public_url: str,
) -> dict[str, Any]:
    known = _report(session, store, result_pk, public_url)
    result = load_result(session, result_pk)
    assert result is not None
    if known.status != "preliminary" or session.scalar(
        select(ReviewDecision.pk).where(ReviewDecision.result_pk == result_pk)
    ):
        raise ReviewConflict(f"AI result {result_pk} is already signed off")
    findings = _checked_findings(
        decision, result["measurements"] or {}, list(known.observation_ids)
    )
    practitioner = _practitioner(store, decision, signer)
    signed_at = datetime.now(UTC)
    sr_uid = ""
    if status == "final":
        sr_uid = _store_verified_sr(session, ingest, result, findings, decision, signer, signed_at)
    observation_ids = dict(known.observation_ids)
    report_id, report_pk = known.diagnostic_report_id, known.pk
    observations = {key: store.read("Observation", oid) for key, oid in observation_ids.items()}
    report = store.read("DiagnosticReport", report_id)
    referrals = _referrals(session, store, report, result) if status == "final" else []
    session.rollback()  # end the read snapshot before writing (expires ``known``)
    with store.write_transaction() as conn:
        conn.execute(
            insert(ReviewDecision).values(
                result_pk=result_pk,
                decision=status,
                findings=[{k: f[k] for k in ("code", "action", "value")} for f in findings],
                conclusion=decision.conclusion,
                signer=signer[:128],
                practitioner=practitioner["reference"],
                organisation=decision.organisation[:128],
                sr_sop_instance_uid=sr_uid,
                signed_at=signed_at,
            )
        )
        for finding in findings:
            oid = observation_ids[finding["code"]]
            body = _reviewed_observation(
                observations[finding["code"]], finding, practitioner, status
            )
            written = store.tx_update(conn, "Observation", oid, body)
            store.check_references(conn, written.resource)
        body = copy.deepcopy(report)
        body.pop("meta", None)
        body.update(
            status=status,
            conclusion=decision.conclusion,
            resultsInterpreter=[practitioner],
            issued=signed_at.isoformat(),
        )
        written = store.tx_update(conn, "DiagnosticReport", report_id, body)
        store.check_references(conn, written.resource)
        signature = store.tx_create(
            conn, sign_provenance(written.resource, practitioner, signed_at)
        )
        store.check_references(conn, signature.resource)
        for request_id in referrals:
            _complete(store, conn, request_id)
        conn.execute(
            update(AiReport)
            .where(AiReport.pk == report_pk)
            .values(status=status, updated_at=signed_at)
        )
        table = ai_records.AI_RESULT
        conn.execute(update(table).where(table.c.pk == result_pk).values(status=status))
        study_uid = str(result["study_instance_uid"])
        access = Access(
            signer, "sign", f"api/review/{result_pk}", status, client_address, study=study_uid
        )
        append(conn, access, at=signed_at)
        changes.record(
            conn,
            "result.signed",
            study_instance_uid=str(result["study_instance_uid"]),
            payload={"result_pk": result_pk, "decision": status, "sr_sop_instance_uid": sr_uid},
        )
    log.info("AI result %s signed off: %s", result_pk, status)
    return review_view(session, store, result_pk, public_url)


def _referrals(
    session: Session, store: FhirStore, report: dict[str, Any], result: Mapping[str, Any]
) -> list[str]:
    """Ids of the ServiceRequests a report answers: its ``basedOn``, else the referral with
    the study's accession number."""
    based_on = [reference_id(ref, "ServiceRequest") for ref in report.get("basedOn") or []]
    ids = [rid for rid in based_on if rid]
    if ids:
        return ids
    accession = session.scalar(
        select(Study.accession_number).where(
            Study.study_instance_uid == str(result["study_instance_uid"])
        )
    )
    request = find_service_request(store, accession) if accession else None
    return [str(request["id"])] if request else []


def _complete(store: FhirStore, conn: Connection, request_id: str) -> None:
    """Mark an active referral ``completed`` in the sign-off's transaction."""
    try:
        request = store.tx_read(conn, "ServiceRequest", request_id)
    except FhirError:  # deleted meanwhile: nothing to complete
        return
    if request.get("status") != "active":
        return
    body = copy.deepcopy(request)
    body.pop("meta", None)
    body["status"] = "completed"
    store.tx_update(conn, "ServiceRequest", request_id, body)


def _store_verified_sr(
    session: Session,
    ingest: IngestService,
    result: Mapping[str, Any],
    findings: list[dict[str, Any]],
    decision: Decision,
    signer: str,
    signed_at: datetime,
) -> str:
    from pacs.emr.verified_sr import build_verified_sr  # highdicom: imported when signing

    evidence = _evidence(session, ingest.store, result)
    sr = build_verified_sr(
        evidence,
        findings,
        decision.conclusion,
        signer,
        decision.organisation,
        signed_at,
        result_key(result),
    )
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    outcome = ingest.store_part10(buffer.getvalue(), Source("review", derived=True))
    if not outcome.status.ok:
        raise ReviewError(f"the verified SR could not be stored: {outcome.reason}")
    return str(sr.SOPInstanceUID)
