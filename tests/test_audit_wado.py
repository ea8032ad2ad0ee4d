"""The audit record of a WADO-RS stream carries its real outcome, on SQLite and PostgreSQL:
200 once the body was sent whole, 500 when a stored object fails to read mid-stream (it
used to be recorded as 200 before the first byte); the study and its patient are named."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.errors import StorageError
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend
from viewer_api.app import create_app

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def app(db_backend: Backend) -> Iterator[FastAPI]:
    application = create_app(db_backend.settings)
    yield application
    application.state.engine.dispose()


def store_study(backend: Backend, instances: int) -> str:
    ingest = build_ingest(backend.settings)
    study, series = generate_uid(), generate_uid()
    for number in range(instances):
        ds = ct_slice(study, series, number, size=8, patient_id="AUDIT-P1")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        outcome = ingest.store_part10(buffer.getvalue(), Source(channel="import"))
        assert outcome.status is StoreStatus.STORED, outcome.reason
    ingest.engine.dispose()
    return study


def wado_rows(app: FastAPI) -> list[tuple[int, str, str, str]]:
    with app.state.sessions() as session:
        rows = session.execute(
            select(
                AuditEvent.outcome,
                AuditEvent.outcome_code,
                AuditEvent.study_instance_uid,
                AuditEvent.patient_identifier,
            )
            .where(AuditEvent.protocol == "dicomweb")
            .order_by(AuditEvent.pk)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_whole_stream_is_recorded_as_success(app: FastAPI, db_backend: Backend) -> None:
    study = store_study(db_backend, 2)
    response = TestClient(app).get(f"/dicomweb/studies/{study}", headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    assert wado_rows(app) == [(200, "0", study, "AUDIT-P1")]


def test_storage_failure_mid_stream_is_recorded_as_failure(
    app: FastAPI, db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = store_study(db_backend, 3)
    store = app.state.store
    real_get = store.get
    reads: list[str] = []

    def failing_get(key: str) -> bytes:
        reads.append(key)
        if len(reads) == 2:
            raise StorageError("disk gone")
        return bytes(real_get(key))

    monkeypatch.setattr(store, "get", failing_get)
    with pytest.raises(StorageError):  # headers and the first part are already sent
        TestClient(app).get(f"/dicomweb/studies/{study}", headers={"Accept": ANY_SYNTAX})
    assert len(reads) == 2
    assert wado_rows(app) == [(500, "8", study, "AUDIT-P1")]
