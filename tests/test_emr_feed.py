"""The EMR-link change-feed consumer: stored position, idempotent re-runs, refusals skipped."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import text, update

from inference.records import ResultRecord, store_result
from pacs import changes
from pacs.emr.feed import CONSUMER, FEED_LOCK, EmrFeed
from pacs.emr.tables import FeedPosition
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.ingest.source import Source
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice, write_ct_series
from tests.conftest import Backend


def _count(store: FhirStore, rtype: str) -> int:
    return int(store.search(rtype, [("_summary", "count")])["total"])


def test_feed_position_is_stored_and_a_replay_changes_nothing(
    db_backend: Backend, tmp_path: Path
) -> None:
    settings = db_backend.settings
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    paths = write_ct_series(tmp_path / "ct", slices=2, size=16, patient_id="P-77")
    for path in paths:
        assert ingest.store_part10(path.read_bytes(), Source("import")).status.ok
    store = FhirStore(engine)
    feed = EmrFeed(engine, store, "http://archive.example")
    assert feed.run_once() > 0
    position = feed.position()
    assert position > 0
    studies = store.search("ImagingStudy", [])["entry"]
    assert len(studies) == 1 and studies[0]["resource"]["numberOfInstances"] == 2
    patient = store.read("Patient", studies[0]["resource"]["subject"]["reference"][8:])
    assert patient["meta"]["tag"][0]["code"] == "reconcile"

    restarted = EmrFeed(engine, FhirStore(engine), "http://archive.example")
    assert restarted.position() == position and restarted.run_once() == 0

    with engine.begin() as conn:  # replay the whole feed: upserts change nothing
        conn.execute(update(FeedPosition).where(FeedPosition.consumer == CONSUMER).values(seq=0))
    assert restarted.run_once() > 0 and restarted.position() == position
    again = store.search("ImagingStudy", [])["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in again] == ["1"]
    assert (_count(store, "Patient"), _count(store, "Endpoint")) == (1, 1)

    registered = store.create(  # the registry learns the patient: the study moves to it
        {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "P-77"}]}
    )
    more = write_ct_series(
        tmp_path / "more",
        slices=1,
        size=16,
        patient_id="P-77",
        study_uid=studies[0]["resource"]["identifier"][0]["value"][8:],
    )
    assert ingest.store_part10(more[0].read_bytes(), Source("import")).status.ok
    assert restarted.run_once() > 0
    [moved] = store.search("ImagingStudy", [])["entry"]
    assert moved["resource"]["subject"]["reference"] == f"Patient/{registered['id']}"
    assert moved["resource"]["numberOfSeries"] == 2
    study_uid = studies[0]["resource"]["identifier"][0]["value"][8:]
    series_uid = studies[0]["resource"]["series"][0]["uid"]
    invalid = {"involvement_percent": 9.0, "ct_severity_grade": "CT-9"}
    bad = ResultRecord(
        study_uid, 1, "ct-chest", series_uid, {"m": "1"}, invalid, "", "", "", "",
    )  # fmt: skip
    store_result(engine, bad)
    orphan = ResultRecord(
        "1.2.3.999", 1, "ct-chest", "1.2.3.999.1", {"m": "1"}, {"involvement_percent": 3.0},
        "", "", "", "",
    )  # fmt: skip
    store_result(engine, orphan)
    assert restarted.run_once() == 2  # a refused result is skipped, not retried forever
    assert restarted.run_once() == 0
    assert (_count(store, "DiagnosticReport"), _count(store, "Observation")) == (0, 0)
    if engine.dialect.name == "postgresql":  # consumers on several nodes take turns
        with engine.connect() as other:
            other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": FEED_LOCK})
            other.commit()
            with engine.begin() as conn:
                changes.record(conn, "study.stable", study_instance_uid=study_uid)
            assert restarted.run_once() == 0
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FEED_LOCK})
            other.commit()
        assert restarted.run_once() == 1
    engine.dispose()
    ingest.engine.dispose()


def test_values_fhir_cannot_hold_are_mapped_not_the_study_dropped(
    db_backend: Backend, tmp_path: Path
) -> None:
    """A negative SeriesNumber / InstanceNumber (FHIR unsignedInt), an impossible StudyDate or
    birth date and an empty PatientName still give a valid ImagingStudy and Patient: what FHIR
    cannot hold is left out (the DICOM objects keep it), never the whole study."""
    from fhir.resources.R4B import get_fhir_model_class

    settings = db_backend.settings
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    study_uid, series_uid = generate_uid(), generate_uid()
    for i, number in enumerate((-5, 2)):
        ds = ct_slice(study_uid, series_uid, i, 8, patient_id="P-NEG")
        ds.SeriesNumber, ds.InstanceNumber = -1, number
        ds.StudyDate, ds.SeriesDate, ds.PatientBirthDate = "20241340", "20240230", "19991399"
        ds.PatientName = "^"
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert ingest.store_part10(path.read_bytes(), Source("import")).status.ok
    store = FhirStore(engine)
    EmrFeed(engine, store, "http://archive.example").run_once()
    [entry] = store.search("ImagingStudy", [])["entry"]
    imaging = entry["resource"]
    get_fhir_model_class("ImagingStudy").model_validate(imaging)
    [series] = imaging["series"]
    assert "number" not in series and "started" not in imaging and "started" not in series
    assert sorted(i.get("number", -1) for i in series["instance"]) == [-1, 2]
    patient = store.read("Patient", imaging["subject"]["reference"][8:])
    assert "birthDate" not in patient and "name" not in patient
    engine.dispose()
    ingest.engine.dispose()
