"""HTTP API: health, metrics, OpenAPI, paged studies, study detail, and the audit trail."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.errors import StorageError
from pacs.index.engine import create_index_engine, session_factory
from pacs.ingest import IngestService, Source, StoreStatus
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend, RunningArchive, start_archive, stop_archive
from viewer_api.app import create_app

SOURCE = Source(channel="import")


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_study(ingest: IngestService, modalities: tuple[str, ...] = ("CT",)) -> str:
    """Ingest one study with one 1-instance series per modality; return its UID."""
    study = generate_uid()
    for number, modality in enumerate(modalities, start=1):
        ds = ct_slice(study, generate_uid(), 0, size=8)
        ds.Modality, ds.SeriesNumber = modality, number
        assert ingest.store_part10(encode(ds), SOURCE).status is StoreStatus.STORED
    return study


def audit_rows(backend: Backend) -> list[AuditEvent]:
    engine = create_index_engine(backend.settings)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(AuditEvent).order_by(AuditEvent.pk)).all())
    finally:
        engine.dispose()


def received(metrics_text: str, channel: str, status: str) -> float:
    """The value of pacs_instances_received_total{channel, status} (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "pacs_instances_received_total" and sample.labels == {
                "channel": channel,
                "status": status,
            }:
                return float(sample.value)
    return 0.0


@pytest.fixture
def client(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(backend.settings)
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()


# ---------------------------------------------------------------- operations


def test_health_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "storage": "ok"}


def test_health_live_checks_nothing_but_the_process(backend: Backend) -> None:
    settings = backend.with_settings(database_url="postgresql+psycopg://pacs@127.0.0.1:1/pacs")
    app = create_app(settings)
    with TestClient(app) as client:
        live, ready = client.get("/health/live"), client.get("/health/ready")
    app.state.engine.dispose()
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503


class _DicomServer:
    def __init__(self, ready: bool) -> None:
        self.ready = ready


def test_health_ready_says_starting_while_the_dicom_workers_load(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    dicom = _DicomServer(ready=False)
    app = create_app(backend.settings, dicom)
    with TestClient(app) as client:
        starting = [client.get(path) for path in ("/health/ready", "/health")]
        dicom.ready = True
        ready = [client.get(path) for path in ("/health/ready", "/health")]
    app.state.engine.dispose()
    for response in starting:
        assert response.status_code == 503
        assert response.json() == {
            "status": "starting",
            "database": "ok",
            "storage": "ok",
            "dicom": "starting",
        }
    for response in ready:
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


def test_health_ready_unavailable_beats_starting(backend: Backend) -> None:
    settings = backend.with_settings(database_url="postgresql+psycopg://pacs@127.0.0.1:1/pacs")
    app = create_app(settings, _DicomServer(ready=False))
    with TestClient(app) as client:
        response = client.get("/health/ready")
    app.state.engine.dispose()
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["dicom"] == "starting"


def test_health_503_when_database_unreachable(backend: Backend) -> None:
    settings = backend.with_settings(database_url="postgresql+psycopg://pacs@127.0.0.1:1/pacs")
    app = create_app(settings)
    with TestClient(app) as client:
        response = client.get("/health")
    app.state.engine.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"].startswith("error")
    assert body["storage"] == "ok"


def test_health_503_when_storage_fails(client: TestClient) -> None:
    class Broken:
        def check(self) -> None:
            raise StorageError("bucket gone")

    real = client.app.state.store  # type: ignore[attr-defined]
    client.app.state.store = Broken()  # type: ignore[attr-defined]
    try:
        response = client.get("/health")
    finally:
        client.app.state.store = real  # type: ignore[attr-defined]
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert "bucket gone" in response.json()["storage"]


def test_metrics_count_ingest(client: TestClient, backend: Backend) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    stored_before = received(before.text, "import", "stored")
    invalid_before = received(before.text, "import", "invalid")

    ingest = build_ingest(backend.settings)
    store_study(ingest)
    assert ingest.store_part10(b"garbage", SOURCE).status is StoreStatus.INVALID

    after = client.get("/metrics").text
    assert received(after, "import", "stored") == stored_before + 1
    assert received(after, "import", "invalid") == invalid_before + 1
    assert "pacs_ingest_seconds_bucket" in after


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/health", "/metrics", "/api/studies", "/api/studies/{study_instance_uid}"} <= set(
        paths
    )
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower() and "/openapi.json" in docs.text


# ---------------------------------------------------------------- studies


def test_studies_paging_newest_first(client: TestClient, backend: Backend) -> None:
    ingest = build_ingest(backend.settings)
    uids = [store_study(ingest) for _ in range(5)]
    newest_first = uids[::-1]

    full = client.get("/api/studies").json()
    assert (full["total"], full["offset"], full["limit"]) == (5, 0, 50)
    assert [s["study_instance_uid"] for s in full["items"]] == newest_first
    assert client.get("/api/studies").json() == full  # stable

    pages = []
    for offset in (0, 2, 4):
        page = client.get("/api/studies", params={"limit": 2, "offset": offset}).json()
        assert (page["total"], page["offset"], page["limit"]) == (5, offset, 2)
        pages += [s["study_instance_uid"] for s in page["items"]]
    assert pages == newest_first
    beyond = client.get("/api/studies", params={"offset": 10}).json()
    assert (beyond["total"], beyond["items"]) == (5, [])

    first = full["items"][0]
    assert first["patient_id"] == "PHANTOM-1"
    assert first["patient_name"] == "Phantom^Chest"
    assert (first["number_of_series"], first["number_of_instances"]) == (1, 1)
    assert first["modalities_in_study"] == ["CT"]
    assert datetime.fromisoformat(first["updated_at"]).tzinfo is not None  # UTC, not naive

    # a new instance in the oldest study makes it the most recently updated
    oldest = ct_slice(uids[0], generate_uid(), 0, size=8)
    assert ingest.store_part10(encode(oldest), SOURCE).status is StoreStatus.STORED
    top = client.get("/api/studies", params={"limit": 1}).json()["items"][0]
    assert top["study_instance_uid"] == uids[0]
    assert top["number_of_instances"] == 2


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}])
def test_studies_paging_validation(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/api/studies", params=params)
    assert response.status_code == 422


def test_study_detail_with_series(client: TestClient, backend: Backend) -> None:
    study = store_study(build_ingest(backend.settings), modalities=("CT", "MR"))
    response = client.get(f"/api/studies/{study}")
    assert response.status_code == 200
    body = response.json()
    assert body["study_instance_uid"] == study
    assert body["modalities_in_study"] == ["CT", "MR"]
    assert (body["number_of_series"], body["number_of_instances"]) == (2, 2)
    assert [
        (s["modality"], s["series_number"], s["number_of_instances"]) for s in body["series"]
    ] == [
        ("CT", 1, 1),
        ("MR", 2, 1),
    ]
    missing = client.get(f"/api/studies/{generate_uid()}")
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]


def test_every_call_writes_an_audit_event(client: TestClient, backend: Backend) -> None:
    study = store_study(build_ingest(backend.settings))
    unknown = generate_uid()
    assert audit_rows(backend) == []
    client.get("/api/studies", params={"limit": 3})
    client.get(f"/api/studies/{study}")
    client.get(f"/api/studies/{unknown}")
    events = audit_rows(backend)
    assert [(e.action, e.resource, e.query, e.outcome) for e in events] == [
        ("search", "/api/studies", "limit=3", 200),
        ("read", f"/api/studies/{study}", "", 200),
        ("read", f"/api/studies/{unknown}", "", 404),
    ]
    assert {e.user_name for e in events} == {"local-admin"}
    assert {e.client_address for e in events} == {"testclient"}
    assert all(e.recorded_at is not None for e in events)
    assert len(audit_rows(backend)) == 3  # reading the audit table is not itself audited here
    client.get("/health")
    client.get("/metrics")
    assert len(audit_rows(backend)) == 3  # no patient data: no audit event


# ---------------------------------------------------------------- a running archive


@pytest.fixture
def archive(backend: Backend, tmp_path: Path) -> Iterator[RunningArchive]:
    """A running archive with two DICOM processes: associations spread over both."""
    running = start_archive(backend, tmp_path / "serve.log", PACS_SCP_PROCESSES="2")
    yield running
    stop_archive(running)


def c_store_on_parallel_associations(archive: RunningArchive, count: int) -> list[int]:
    """Open ``count`` associations at once (spread over the SCP processes), one C-STORE each."""
    ae = AE(ae_title="HTTPTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    associations = [
        ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS") for _ in range(count)
    ]
    statuses = []
    study = generate_uid()
    try:
        for assoc in associations:
            assert assoc.is_established
        for assoc in associations:
            ds = ct_slice(study, generate_uid(), 0, size=8)
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status))
    finally:
        for assoc in associations:
            assoc.release()
    return statuses


def test_running_archive_health_metrics_and_audit(archive: RunningArchive) -> None:
    health = httpx.get(f"{archive.http}/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "storage": "ok", "dicom": "ok"}

    assert c_store_on_parallel_associations(archive, 2) == [0x0000, 0x0000]
    metrics = httpx.get(f"{archive.http}/metrics", timeout=10).text
    # the HTTP process ingests nothing itself: the counts come from the SCP processes
    assert received(metrics, "dimse", "stored") == 2

    page = httpx.get(f"{archive.http}/api/studies", timeout=10).json()
    assert page["total"] == 1
    assert page["items"][0]["number_of_series"] == 2
    [event] = [e for e in audit_rows(archive.backend) if e.protocol == "http"]  # not C-STORE
    assert (event.user_name, event.action, event.resource) == (
        "local-admin",
        "search",
        "/api/studies",
    )
    assert event.client_address == "127.0.0.1"

    docs = httpx.get(f"{archive.http}/docs", timeout=10)
    assert docs.status_code == 200
