"""What an HTTP client can make the archive hold or answer: JSON bodies over
``http_max_json_bytes`` refused with 413 before (Content-Length) or while (chunked) they are
read, and a database outage answered 503 with a reason (an OperationOutcome under /fhir),
never a raw 500."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacs.security.subject import LOCAL_ADMIN
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend
from tests.dimse_tools import part10_bytes
from viewer_api.app import PROTECTED_ROUTERS, PUBLIC_ROUTERS, create_app
from viewer_api.deps import get_current_user

LIMIT = 64 * 1024


@pytest.fixture
def api(db_backend: Backend) -> Iterator[TestClient]:
    app = create_app(
        db_backend.with_settings(
            emr_feed=False,
            http_max_json_bytes=LIMIT,
            webhook_allowed_networks="127.0.0.0/8",  # RECEIVER: a registrable webhook URL
        )
    )
    app.dependency_overrides[get_current_user] = lambda: LOCAL_ADMIN
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


RECEIVER = "http://127.0.0.1:9/hook"
"""A webhook receiver the SSRF guard admits here (loopback is allow-listed by ``api``)."""


def _receiver(padding: int) -> bytes:
    return b'{"url": "' + RECEIVER.encode() + b'", "secret": "' + b"x" * padding + b'"}'


def test_a_body_announced_over_the_limit_is_refused_unread(api: TestClient) -> None:
    response = api.post(
        "/api/webhooks",
        content=_receiver(2 * LIMIT),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]
    assert api.get("/api/webhooks").json() == []


def test_a_chunked_body_is_refused_once_past_the_limit(api: TestClient) -> None:
    """500 MB offered in 64 KiB chunks without a length: refused after about the limit."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"url": "' + RECEIVER.encode() + b'", "secret": "'
        for _ in range(500 * 16):
            sent += 1
            yield b"x" * (64 * 1024)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://archive") as client:
            return await client.post(
                "/api/webhooks", content=chunks(), headers={"content-type": "application/json"}
            )

    response = asyncio.run(post())
    assert response.status_code == 413
    assert sent <= 4, f"{sent} chunks were read"
    assert api.get("/api/webhooks").json() == []


def test_a_body_under_the_limit_is_served(api: TestClient) -> None:
    response = api.post(
        "/api/webhooks", content=_receiver(100), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------- database outage


@contextlib.contextmanager
def _outage(backend: Backend, client: TestClient) -> Iterator[None]:
    """The index database becomes unreachable for the running app (and comes back after)."""
    state = client.app.state  # type: ignore[attr-defined]
    engines = [state.engine, state.ingest.engine]
    if backend.database == "sqlite":
        path = Path(backend.settings.data_dir) / "index.sqlite3"
        aside = path.with_name("index.sqlite3.aside")
        for engine in engines:
            engine.dispose()
        os.replace(path, aside)
        path.mkdir()  # opening a directory as the database fails
        try:
            yield
        finally:
            for engine in engines:
                engine.dispose()
            path.rmdir()
            os.replace(aside, path)
        return
    url = make_url(backend.settings.database_url or "")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
            {"db": url.database},
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def _get_routes() -> Iterator[str]:
    for router in PUBLIC_ROUTERS + PROTECTED_ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute) and "GET" in route.methods:
                path = route.path.replace("{resource_type}", "Patient")
                path = path.replace("{path:path}", "00280010").replace("{name}", "x.css")
                while "{" in path:
                    start, end = path.index("{"), path.index("}")
                    path = path[:start] + "1.2.3" + path[end + 1 :]
                yield path


def test_a_database_outage_is_503_with_a_reason(db_backend: Backend, api: TestClient) -> None:
    with _outage(db_backend, api):
        answers = {path: api.get(path) for path in _get_routes()}
        created = api.post("/api/webhooks", json={"url": RECEIVER})
    raw = {path: r.status_code for path, r in answers.items() if r.status_code == 500}
    assert not raw, f"raw 500 during the outage: {raw}"
    assert created.status_code == 503
    for path in ("/api/studies", "/api/jobs", "/api/webhooks", "/api/changes"):
        assert answers[path].status_code == 503, path
        assert "database is unavailable" in answers[path].json()["detail"]
        assert answers[path].headers["retry-after"]
    patients = answers["/fhir/Patient"]
    assert patients.status_code == 503
    assert patients.json()["resourceType"] == "OperationOutcome"
    assert patients.json()["issue"][0]["code"] == "transient"
    assert answers["/health/ready"].status_code == 503
    assert api.get("/api/studies").status_code == 200  # back once the database is


# ---------------------------------------------------------------- STOW-RS


BOUNDARY = "bounded-stow"


def _big_part10(megabytes: int) -> tuple[str, bytes]:
    side = int((megabytes * 2**20 / 2) ** 0.5)
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    ds.Rows = ds.Columns = side
    ds.PixelData = np.zeros((side, side), dtype=np.int16).tobytes()
    return str(ds.SOPInstanceUID), part10_bytes(ds)


async def _multipart(parts: list[bytes], headers: bytes = b"") -> AsyncIterator[bytes]:
    """The body in 64 KiB chunks, each part's bytes sliced from its object (no body copy)."""
    for data in parts:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode() + headers + b"\r\n"
        view = memoryview(data)
        for start in range(0, len(data), 65536):
            yield bytes(view[start : start + 65536])
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def _stow(api: TestClient, body: AsyncIterator[bytes]) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://archive") as client:
            return await client.post(
                "/dicomweb/studies",
                content=body,
                headers={
                    "content-type": f'multipart/related; type="application/dicom"; '
                    f"boundary={BOUNDARY}",
                    "accept": "application/dicom+json",
                },
                timeout=120,
            )

    return asyncio.run(post())


def test_stow_holds_about_one_part_at_a_time(api: TestClient) -> None:
    """Four 16 MB instances in one streamed request: the traced peak stays near one part
    (the body is spooled, parts are stored one after another)."""
    objects = [_big_part10(16) for _ in range(4)]
    tracemalloc.start()
    try:
        response = _stow(api, _multipart([data for _, data in objects]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    part = len(objects[0][1])
    assert peak < 2 * part, f"peak {peak / 2**20:.0f} MiB for parts of {part / 2**20:.0f} MiB"


def test_stow_refuses_more_parts_than_allowed(db_backend: Backend) -> None:
    """Parts past ``stow_max_parts`` are refused with 413 while the body streams in; their
    header blocks are not kept (16 KiB of headers each)."""
    app = create_app(db_backend.with_settings(emr_feed=False, stow_max_parts=50))
    app.dependency_overrides[get_current_user] = lambda: LOCAL_ADMIN
    padding = b"X-Padding: " + b"p" * 15000 + b"\r\n"
    with TestClient(app, raise_server_exceptions=False) as client:
        response = _stow(client, _multipart([b"\x00" * 16] * 51, padding))
    assert response.status_code == 413
    assert "50" in response.json()["detail"]
