"""The EMR link attaches a study to a FHIR Patient on identifier AND demographics: one found
by PatientID (or as its referral's subject) whose name, birth date or gender contradict is
never the study's subject; the study is flagged for reconciliation (``/api/studies/{uid}``,
one ``study.reconcile`` change event) and the registered Patient is left untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacs import changes
from pacs.emr.feed import EmrFeed
from pacs.emr.identifiers import UNMATCHED_PATIENT
from pacs.emr.matching import patient_contradictions
from pacs.fhir.store import FhirStore
from pacs.identity import Demographics
from pacs.index.engine import create_index_engine
from pacs.ingest.source import Source
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice, write_ct_series
from tests.conftest import Backend
from tests.test_ingest import encode
from viewer_api.app import create_app

REGISTERED = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.643.5.1.13", "value": "P-88"}],
    "name": [{"family": "Иванова", "given": ["Мария", "Петровна"]}],
    "birthDate": "1958-03-12",
    "gender": "female",
}
BENCH = Demographics("P-88", "", "BENCH^PATIENT0000", "19700101", "O")


@pytest.mark.parametrize(
    ("dicom", "contradicting"),
    [
        (BENCH, ["PatientName", "PatientBirthDate", "PatientSex"]),
        (Demographics("P-88", "", "ИВАНОВА^МАРИЯ", "19580312", "F"), []),
        (Demographics("P-88", "", "Иванова^Мария^Петровна^^", "", ""), []),
        (Demographics("P-88", "", "", "19580312", ""), []),
        (Demographics("P-88", "", "Иванова^Анна", "19580312", "F"), ["PatientName"]),
    ],
)
def test_fhir_patient_contradictions(dicom: Demographics, contradicting: list[str]) -> None:
    assert patient_contradictions(dicom, REGISTERED) == contradicting


def test_partial_birth_date_and_unknown_gender() -> None:
    patient = {"birthDate": "1958", "gender": "unknown"}
    assert patient_contradictions(Demographics(patient_birth_date="19580312"), patient) == []
    assert patient_contradictions(Demographics(patient_birth_date="19700101"), patient) == [
        "PatientBirthDate"
    ]


def _ingest(backend: Backend, folder: Path, **patient: Any) -> str:
    ingest = build_ingest(backend.settings)
    paths = write_ct_series(folder, slices=1, size=16, **patient)
    for path in paths:
        assert ingest.store_part10(path.read_bytes(), Source("import")).status.ok
    return str(dcmread(paths[0]).StudyInstanceUID)


@pytest.fixture
def api(db_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(db_backend.settings)
    with TestClient(app) as client:
        yield client
    app.state.engine.dispose()


def _reconcile_events(engine: Any) -> list[changes.ChangeEvent]:
    with engine.connect() as conn:
        return changes.read_since(conn, 0, limit=1000, kinds={"study.reconcile"})


def test_contradicting_patient_is_not_linked_and_the_study_is_flagged(
    db_backend: Backend, api: TestClient, tmp_path: Path
) -> None:
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    registered = store.create(REGISTERED)
    feed = EmrFeed(engine, store, "http://archive.example")
    # the case: PatientID matches, name, birth date and sex are someone else's
    bench = _ingest(
        db_backend, tmp_path / "bench", patient_id="P-88", patient_name="BENCH^PATIENT0000"
    )
    assert feed.run_once() > 0
    [study] = store.search("ImagingStudy", [("identifier", f"urn:oid:{bench}")])["entry"]
    subject = study["resource"]["subject"]["reference"]
    assert subject != f"Patient/{registered['id']}"
    placeholder = store.read("Patient", subject.removeprefix("Patient/"))
    assert placeholder["meta"]["tag"][0]["code"] == "reconcile"
    assert placeholder["identifier"][0]["system"] == UNMATCHED_PATIENT
    assert store.read("Patient", registered["id"])["meta"]["versionId"] == "1"  # untouched
    detail = api.get(f"/api/studies/{bench}").json()
    assert detail["reconciliation"]["candidate"] == f"Patient/{registered['id']}"
    assert detail["reconciliation"]["reason"] == (
        "demographics contradict the FHIR Patient: PatientName, PatientBirthDate, PatientSex"
    )
    [event] = _reconcile_events(engine)
    assert event.study_instance_uid == bench
    assert event.payload == {
        "reason": detail["reconciliation"]["reason"],
        "candidate": f"Patient/{registered['id']}",
    }
    # projecting the study again neither links it nor raises a second event
    more = write_ct_series(
        tmp_path / "more", slices=1, size=16, study_uid=bench, patient_id="P-88",
        patient_name="BENCH^PATIENT0000",
    )  # fmt: skip
    ingest = build_ingest(db_backend.settings)
    assert ingest.store_part10(more[0].read_bytes(), Source("import")).status.ok
    assert feed.run_once() > 0
    assert len(_reconcile_events(engine)) == 1
    engine.dispose()


def test_matching_patient_is_linked_and_referral_of_another_person_is_not(
    db_backend: Backend, api: TestClient, tmp_path: Path
) -> None:
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    registered = store.create(REGISTERED)
    feed = EmrFeed(engine, store, "http://archive.example")
    study_uid = generate_uid()
    _write_and_ingest(
        db_backend, tmp_path / "a", study_uid, "P-88", "Иванова^Мария", "19580312", "F"
    )
    assert feed.run_once() > 0
    [study] = store.search("ImagingStudy", [("identifier", f"urn:oid:{study_uid}")])["entry"]
    assert study["resource"]["subject"]["reference"] == f"Patient/{registered['id']}"
    assert api.get(f"/api/studies/{study_uid}").json()["reconciliation"] is None
    # a referral for her, but the images (unknown PatientID) are of somebody else
    request = store.create(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{registered['id']}"},
            "identifier": [{"system": "urn:pacs:accession", "value": "ACC-REF-1"}],
        }
    )
    other_uid = generate_uid()
    _write_and_ingest(
        db_backend, tmp_path / "b", other_uid, "X-1", "Petrov^Ivan", "19800101", "M", "ACC-REF-1"
    )
    assert feed.run_once() > 0
    [other] = store.search("ImagingStudy", [("identifier", f"urn:oid:{other_uid}")])["entry"]
    assert other["resource"]["subject"]["reference"] != f"Patient/{registered['id']}"
    assert "basedOn" not in other["resource"]
    flag = api.get(f"/api/studies/{other_uid}").json()["reconciliation"]
    assert flag["candidate"] == f"Patient/{registered['id']}"
    assert request["id"]
    engine.dispose()


def _write_and_ingest(
    backend: Backend,
    folder: Path,
    study_uid: str,
    patient_id: str,
    name: str,
    birth: str,
    sex: str,
    accession: str = "ACC0001",
) -> None:
    ds = ct_slice(
        study_uid,
        generate_uid(),
        0,
        size=16,
        patient_id=patient_id,
        patient_name=name,
        accession_number=accession,
    )
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Cyrillic names
    ds.PatientBirthDate, ds.PatientSex = birth, sex
    outcome = build_ingest(backend.settings).store_part10(encode(ds), Source("import"))
    assert outcome.status.ok, outcome
