"""Sign-off service (pacs.emr.review) in process: rejection, the sign-off Provenance, audit,
change feed, and a second sign-off refused; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.records import AI_RESULT, ResultRecord, ResultSignedOffError, store_result
from pacs import changes
from pacs.audit.tables import AuditEvent
from pacs.emr.feed import EmrFeed
from pacs.emr.review import Decision, FindingDecision, ReviewConflict, review_view, sign_off
from pacs.emr.tables import ReviewDecision
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.index.models import Instance
from pacs.ingest.source import Source
from pacs.jobs.rules import DEFAULT_RULES, RuleSet, parse_rules
from pacs.runtime import build_ingest
from testkit.dicom_factory import write_ct_series
from testkit.inference_helpers import Archive
from tests.conftest import Backend

URL = "http://archive.example"
MEASUREMENTS = {"involvement_percent": 40.0, "ct_severity_grade": "CT-2"}


def test_rejected_report_is_cancelled_with_provenance_audit_and_change(
    db_backend: Backend, tmp_path: Path
) -> None:
    settings = db_backend.settings
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    paths = write_ct_series(tmp_path / "ct", slices=2, size=16, patient_id="P-9")
    for path in paths:
        assert ingest.store_part10(path.read_bytes(), Source("import")).status.ok
    store = FhirStore(engine)
    feed = EmrFeed(engine, store, URL)
    feed.run_once()
    study = store.search("ImagingStudy", [])["entry"][0]["resource"]
    record = ResultRecord(
        study["identifier"][0]["value"][8:], 1, "ct-chest", study["series"][0]["uid"],
        {"lung-seg": "2.0"}, MEASUREMENTS, "", "", "", "",
    )  # fmt: skip
    pk = store_result(engine, record)
    with Session(engine) as session:  # the review publishes the report if the feed has not
        view = review_view(session, store, pk, URL)
        [study_now] = store.search("ImagingStudy", [])["entry"]
        endpoint_ref = study_now["resource"]["endpoint"][0]["reference"]
        assert store.read("Endpoint", endpoint_ref[9:])["address"] == f"{URL}/dicomweb"
        assert [f["status"] for f in view["findings"]] == ["preliminary", "preliminary"]
        decision = Decision(
            "reject", "Motion artefacts; AI result not usable.",
            [FindingDecision("involvement_percent", "reject")],
        )  # fmt: skip
        after = sign_off(session, store, ingest, pk, decision, "dr.ivanova", "10.0.0.7", URL)
        assert after["status"] == "cancelled"
        assert {f["status"] for f in after["findings"]} == {"cancelled"}
        assert after["decision"]["sr_sop_instance_uid"] == ""  # no verified SR for a rejection
        with pytest.raises(ReviewConflict):
            sign_off(session, store, ingest, pk, Decision("sign", "x"), "dr.other", "", URL)
        with pytest.raises(ResultSignedOffError):  # a re-run may not replace a signed result
            store_result(engine, record)
        signed = session.scalars(select(ReviewDecision)).all()
        assert [(d.decision, d.signer) for d in signed] == [("cancelled", "dr.ivanova")]
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "sign")).all()
        assert [(a.user_name, a.client_address) for a in audit] == [("dr.ivanova", "10.0.0.7")]
        assert session.scalar(select(AI_RESULT.c.status).where(AI_RESULT.c.pk == pk)) == "cancelled"
    report_id = view["diagnostic_report"]
    provenance = store.search("Provenance", [("target", report_id)])["entry"]
    agents = sorted(p["resource"]["agent"][0]["type"]["coding"][0]["code"] for p in provenance)
    assert agents == ["author", "verifier"]
    with engine.connect() as conn:
        signed_events = changes.read_since(conn, 0, kinds={"result.signed"})
    assert [e.payload["decision"] for e in signed_events] == ["cancelled"]  # type: ignore[index]
    feed.run_once()  # a re-announced result never reopens a signed report
    assert store.read("DiagnosticReport", report_id[17:])["status"] == "cancelled"
    engine.dispose()
    ingest.engine.dispose()


def test_real_ct_analysis_is_reported_and_signed(
    db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ct-chest pipeline's own result and TID 1500 SR through report and sign-off."""
    from inference import pipeline
    from testkit.chest_phantom import chest_phantom, phantom_series
    from testkit.inference_helpers import TruthSegmenter, open_archive

    phantom = chest_phantom(size=48, slices=12, involvement=0.3, emphysema=0.05, seed=3)
    for archive in open_archive(db_backend.with_settings(inference_min_slices=10)):
        datasets = phantom_series(phantom, shuffle_seed=1)
        archive.store(datasets)
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: TruthSegmenter(phantom.lungs))
        result = pipeline.analyse_ct_chest(archive.context(study, [series]))
        ai_sr_uid = result.output_sop_instance_uids[1]
        store = FhirStore(archive.engine)
        EmrFeed(archive.engine, store, URL).run_once()
        [report] = store.search("DiagnosticReport", [])["entry"]
        assert report["resource"]["status"] == "preliminary"
        assert len(report["resource"]["result"]) == 7
        [device] = store.search("Device", [])["entry"]
        assert {v["type"]["text"] for v in device["resource"]["version"]} == {
            "lung-seg",
            "lung-densitometry",
        }
        with Session(archive.engine) as session:
            pk = int(result.summary["result_pk"])
            decision = Decision("sign", "Viral pneumonia.", [], "City Hospital 1")
            after = sign_off(session, store, archive.ingest, pk, decision, "Ivanova^Anna", "", URL)
            sr_uid = after["decision"]["sr_sop_instance_uid"]
            keys = dict(
                session.execute(
                    select(Instance.sop_instance_uid, Instance.object_key).where(
                        Instance.sop_instance_uid.in_([sr_uid, ai_sr_uid])
                    )
                ).all()
            )
        verified = pydicom.dcmread(BytesIO(archive.ingest.store.get(keys[sr_uid])))
        original = pydicom.dcmread(BytesIO(archive.ingest.store.get(keys[ai_sr_uid])))
        assert (verified.VerificationFlag, original.VerificationFlag) == ("VERIFIED", "UNVERIFIED")
        assert verified.StudyInstanceUID == study
        evidence = verified.CurrentRequestedProcedureEvidenceSequence[0]
        referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == ai_sr_uid


def test_concurrent_sign_offs_one_wins_and_one_sr_is_stored(
    db_backend: Backend, tmp_path: Path
) -> None:
    settings = db_backend.settings
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    for path in write_ct_series(tmp_path / "ct", slices=2, size=16, patient_id="P-10"):
        assert ingest.store_part10(path.read_bytes(), Source("import")).status.ok
    store = FhirStore(engine)
    EmrFeed(engine, store, URL).run_once()
    study = store.search("ImagingStudy", [])["entry"][0]["resource"]
    pk = store_result(
        engine,
        ResultRecord(
            study["identifier"][0]["value"][8:], 1, "ct-chest", study["series"][0]["uid"],
            {"lung-seg": "2.0"}, MEASUREMENTS, "", "", "", "",
        ),
    )  # fmt: skip
    outcomes: list[str] = []

    def sign(name: str) -> None:
        with Session(engine) as session:
            try:
                sign_off(session, store, ingest, pk, Decision("sign", "ok"), name, "", URL)
                outcomes.append("signed")
            except ReviewConflict:
                outcomes.append("conflict")

    threads = [threading.Thread(target=sign, args=(f"dr.{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["conflict", "signed"]
    with Session(engine) as session:
        srs = session.scalars(
            select(Instance.sop_instance_uid).where(
                Instance.sop_class_uid == ComprehensiveSRStorage
            )
        ).all()
        [decision] = session.scalars(select(ReviewDecision)).all()
    assert srs == [decision.sr_sop_instance_uid]
    engine.dispose()
    ingest.engine.dispose()


def _analyse_and_sign(archive: Archive, rules: RuleSet, study: str, version: int) -> int:
    """Let the study become stable, run its one new ct-chest job, publish and sign it; then
    check that nothing re-opened the study and that a retry of the job is refused."""
    from inference import pipeline
    from pacs.jobs.analysis import AnalysisRefused
    from pacs.jobs.sweeper import study_state, sweep
    from tests.jobs_helpers import jobs_of

    store = FhirStore(archive.engine)
    time.sleep(0.4)
    [done] = sweep(archive.engine, rules, 3)
    assert (done.version, len(done.job_ids)) == (version, 1)
    job = jobs_of(archive.engine, study)[-1]
    assert (job.analysis, job.study_version) == ("ct-chest", version)
    context = archive.context(study, list(job.series_instance_uids), version)
    pk = int(pipeline.analyse_ct_chest(context).summary["result_pk"])
    EmrFeed(archive.engine, store, URL).run_once()
    with Session(archive.engine) as session:
        decision = Decision("sign", f"Signed v{version}.", [], "City Hospital 1")
        sign_off(session, store, archive.ingest, pk, decision, "Ivanova^Anna", "", URL)
        with pytest.raises(ReviewConflict):  # a sign-off is final
            sign_off(session, store, archive.ingest, pk, decision, "dr.other", "", URL)
    time.sleep(0.4)
    assert sweep(archive.engine, rules, 3) == []  # the verified SR queued nothing
    state = study_state(archive.engine, study)
    assert state is not None and (state["state"], state["version"]) == ("stable", version)
    with pytest.raises(AnalysisRefused, match="signed off"):  # an operator's retry
        pipeline.analyse_ct_chest(context)
    return pk


def test_sign_off_is_final_and_derived_objects_never_reanalyse(
    db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path twice (issue 10 §1): stored -> stable -> ct-chest -> report -> signed.

    The verified SR never re-opens the study, so nothing is re-analysed; a retry of a signed
    version changes nothing; only new source images make a new version, analysed and signed
    once. Each version keeps one SEG, one UNVERIFIED SR, one VERIFIED SR and one report."""
    from inference import pipeline
    from testkit.chest_phantom import chest_phantom, phantom_series
    from testkit.inference_helpers import TruthSegmenter, open_archive
    from tests.jobs_helpers import jobs_of

    small = DEFAULT_RULES.replace("min: 50", "min: 10").replace("max: 5.0", "max: 30")
    rules = parse_rules(small)  # the built-in rule, for a 12-slice phantom
    phantom = chest_phantom(size=48, slices=12, involvement=0.3, emphysema=0.05, seed=3)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: TruthSegmenter(phantom.lungs))
    settings = db_backend.with_settings(inference_min_slices=10, stable_after_seconds=0.3)
    for archive in open_archive(settings):
        datasets = phantom_series(phantom, shuffle_seed=1)
        study = str(datasets[0].StudyInstanceUID)
        archive.store(datasets)
        first = _analyse_and_sign(archive, rules, study, 1)
        archive.store(phantom_series(phantom, study_uid=study, shuffle_seed=2))  # new images
        second = _analyse_and_sign(archive, rules, study, 2)

        store = FhirStore(archive.engine)
        EmrFeed(archive.engine, store, URL).run_once()
        assert [j.study_version for j in jobs_of(archive.engine, study)] == [1, 2]
        reports = [e["resource"] for e in store.search("DiagnosticReport", [])["entry"]]
        assert sorted(r["status"] for r in reports) == ["final", "final"]
        assert sorted(r["conclusion"] for r in reports) == ["Signed v1.", "Signed v2."]
        assert len(store.search("Device", [])["entry"]) == 1  # one per model version
        with Session(archive.engine) as session:
            statuses = dict(session.execute(select(AI_RESULT.c.pk, AI_RESULT.c.status)).all())
            assert statuses == {first: "final", second: "final"}
            keys = session.scalars(
                select(Instance.object_key).where(Instance.sop_class_uid != CTImageStorage)
            ).all()
        derived = [pydicom.dcmread(BytesIO(archive.ingest.store.get(k))) for k in keys]
        kinds = sorted((d.Modality, d.get("VerificationFlag", "")) for d in derived)
        assert (
            kinds
            == [("SEG", ""), ("SEG", ""), ("SR", "UNVERIFIED"), ("SR", "UNVERIFIED")]
            + [("SR", "VERIFIED")] * 2
        )
