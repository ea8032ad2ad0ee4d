"""Sign-off service (pacs.emr.review) in process: rejection, the sign-off Provenance, audit,
change feed, and a second sign-off refused; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.records import AI_RESULT, ResultRecord, store_result
from pacs import changes
from pacs.emr.feed import EmrFeed
from pacs.emr.review import Decision, FindingDecision, ReviewConflict, review_view, sign_off
from pacs.emr.tables import ReviewDecision
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.index.models import AuditEvent, Instance
from pacs.ingest.source import Source
from pacs.runtime import build_ingest
from testkit.dicom_factory import write_ct_series
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
