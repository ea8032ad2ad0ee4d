"""The registry of remote AEs: migration 0002, validation, ``pacs ae`` and ``/api/aes``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from pacs.aes import AESpec, InvalidAEError
from pacs.audit.tables import AuditEvent
from pacs.cli import app
from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.index.migrate import alembic_config, current_revision, upgrade
from tests.conftest import Backend
from tests.test_index import empty_database, schema_diff  # noqa: F401 (fixture)
from viewer_api.app import create_app

# ---------------------------------------------------------------- migration


def test_migration_0002_upgrade_and_downgrade(empty_database: str) -> None:  # noqa: F811
    engine = create_index_engine(Settings(database_url=empty_database))
    try:
        upgrade(engine, "0001")
        assert "remote_ae" not in inspect(engine).get_table_names()
        upgrade(engine, "0002")
        assert current_revision(engine) == "0002"
        assert "remote_ae" in inspect(engine).get_table_names()
        command.downgrade(alembic_config(engine), "0001")
        assert current_revision(engine) == "0001"
        tables = set(inspect(engine).get_table_names())
        assert "remote_ae" not in tables and "study" in tables
        upgrade(engine)
    finally:
        engine.dispose()
    assert schema_diff(empty_database) == []


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("title", "host", "port", "field"),
    [
        ("", "h", 104, "title"),
        ("   ", "h", 104, "title"),
        ("A" * 17, "h", 104, "title"),
        ("BAD\\AE", "h", 104, "title"),
        ("BAD\nAE", "h", 104, "title"),
        ("ТИТУЛ", "h", 104, "title"),
        ("OK", "", 104, "host"),
        ("OK", "two words", 104, "host"),
        ("OK", "h", 0, "port"),
        ("OK", "h", 65536, "port"),
        ("OK", "h", True, "port"),
    ],
)
def test_invalid_entries_are_refused(title: str, host: str, port: int, field: str) -> None:
    with pytest.raises(InvalidAEError) as caught:
        AESpec(title, host, port)
    assert caught.value.field == field


def test_title_is_stripped_and_case_kept() -> None:
    spec = AESpec("  Orthanc ", " pacs.example.org ", 4242, " Hospital 1 ")
    assert (spec.title, spec.host, spec.port, spec.organisation) == (
        "Orthanc",
        "pacs.example.org",
        4242,
        "Hospital 1",
    )


# ---------------------------------------------------------------- CLI


def run(backend: Backend, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={**backend.env, "COLUMNS": "200"})
    return result.exit_code, result.output


def test_cli_add_list_update_remove(db_backend: Backend) -> None:
    code, out = run(db_backend, "ae", "add", "ORTHANC", "10.0.0.5", "4242", "--organisation", "H1")
    assert code == 0, out
    assert "added ORTHANC 10.0.0.5:4242" in out
    assert run(db_backend, "ae", "add", "STORESCP", "127.0.0.1", "11113")[0] == 0
    code, out = run(db_backend, "ae", "add", "ORTHANC", "10.0.0.6", "104")
    assert code == 0 and "updated ORTHANC 10.0.0.6:104" in out, out

    code, out = run(db_backend, "ae", "list")
    assert code == 0, out
    assert "remote AEs: 2" in out
    rows = [line for line in out.splitlines() if "ORTHANC" in line or "STORESCP" in line]
    assert "10.0.0.6" in rows[0] and "104" in rows[0] and "STORESCP" in rows[1]

    code, out = run(db_backend, "ae", "remove", "ORTHANC")
    assert code == 0 and "removed ORTHANC" in out, out
    code, out = run(db_backend, "ae", "remove", "ORTHANC")
    assert code == 1 and "no remote AE titled 'ORTHANC'" in out, out
    code, out = run(db_backend, "ae", "list")
    assert "remote AEs: 1" in out and "ORTHANC" not in out


def test_cli_refuses_bad_values(db_backend: Backend) -> None:
    code, out = run(db_backend, "ae", "add", "A" * 17, "h", "104")
    assert code == 2 and "1-16 characters" in out, out
    code, out = run(db_backend, "ae", "add", "OK", "h", "70000")
    assert code == 2 and "port" in out, out
    code, out = run(db_backend, "ae", "add", "OK", "h", "notaport")
    assert code == 2, out
    assert "remote AEs: 0" in run(db_backend, "ae", "list")[1]


def test_cli_applies_migrations_on_a_new_data_dir_with_init(tmp_path: Path) -> None:
    env = {"PACS_DATABASE_URL": "", "PACS_DATA_DIR": str(tmp_path / "fresh")}
    add = ["ae", "add", "PEER", "127.0.0.1", "104", "--init"]
    result = CliRunner().invoke(app, add, env=env)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["ae", "list"], env=env)
    assert "PEER" in result.output


# ---------------------------------------------------------------- HTTP


@pytest.fixture
def client(db_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    api = create_app(db_backend.settings)
    with TestClient(api) as test_client:
        yield test_client
    api.state.engine.dispose()


def audit(backend: Backend) -> list[tuple[str, str, int]]:
    engine = create_index_engine(backend.settings)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.resource.startswith("/api/aes"))
                .order_by(AuditEvent.pk)
            ).all()
            return [(r.action, r.resource, r.outcome) for r in rows]
    finally:
        engine.dispose()


def test_http_put_get_list_delete(client: TestClient, db_backend: Backend) -> None:
    created = client.put("/api/aes/ORTHANC", json={"host": "10.0.0.5", "port": 4242})
    assert created.status_code == 201, created.text
    assert created.json()["title"] == "ORTHANC" and created.json()["port"] == 4242
    updated = client.put(
        "/api/aes/ORTHANC", json={"host": "10.0.0.6", "port": 104, "organisation": "H1"}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["created_at"] == created.json()["created_at"]
    assert client.put("/api/aes/STORESCP", json={"host": "h", "port": 11113}).status_code == 201

    listed = client.get("/api/aes")
    assert listed.status_code == 200
    assert [(e["title"], e["host"], e["port"], e["organisation"]) for e in listed.json()] == [
        ("ORTHANC", "10.0.0.6", 104, "H1"),
        ("STORESCP", "h", 11113, ""),
    ]
    assert client.get("/api/aes/ORTHANC").json()["host"] == "10.0.0.6"

    assert client.delete("/api/aes/ORTHANC").status_code == 204
    assert client.get("/api/aes/ORTHANC").status_code == 404
    assert client.delete("/api/aes/ORTHANC").status_code == 404
    assert [e["title"] for e in client.get("/api/aes").json()] == ["STORESCP"]

    assert audit(db_backend) == [
        ("create", "/api/aes/ORTHANC", 201),
        ("update", "/api/aes/ORTHANC", 200),
        ("create", "/api/aes/STORESCP", 201),
        ("delete", "/api/aes/ORTHANC", 204),
        ("delete", "/api/aes/ORTHANC", 404),
    ]


@pytest.mark.parametrize(
    ("title", "body"),
    [
        ("ORTHANC", {"host": "h"}),
        ("ORTHANC", {"port": 104}),
        ("ORTHANC", {"host": "h", "port": 0}),
        ("ORTHANC", {"host": "h", "port": 65536}),
        ("ORTHANC", {"host": "h", "port": "x"}),
        ("ORTHANC", {"host": "", "port": 104}),
        ("ORTHANC", {"host": "a b", "port": 104}),
        ("A" * 17, {"host": "h", "port": 104}),
        ("BAD%5CAE", {"host": "h", "port": 104}),
        ("BAD%01AE", {"host": "h", "port": 104}),
    ],
)
def test_http_bad_input_is_422_and_changes_nothing(
    client: TestClient, title: str, body: dict[str, object]
) -> None:
    response = client.put(f"/api/aes/{title}", json=body)
    assert response.status_code == 422, response.text
    assert client.get("/api/aes").json() == []


def test_http_unknown_and_bad_titles(client: TestClient) -> None:
    assert client.get("/api/aes/NOPE").status_code == 404
    assert client.get(f"/api/aes/{'A' * 17}").status_code == 422
    assert client.delete(f"/api/aes/{'A' * 17}").status_code == 422


def test_concurrent_creation_of_one_title(db_backend: Backend) -> None:
    """Eight writers register one title at once: one creates, the others update, none fails."""
    from concurrent.futures import ThreadPoolExecutor

    from pacs.aes import list_aes, put_ae

    engine = create_index_engine(db_backend.settings)
    sessions = session_factory(engine)

    def register(port: int) -> bool:
        with sessions() as session:
            return put_ae(session, AESpec("RACE", "127.0.0.1", port))[1]

    try:
        with ThreadPoolExecutor(8) as pool:
            created = list(pool.map(register, range(1000, 1008)))
        assert created.count(True) == 1
        with sessions() as session:
            assert [e.title for e in list_aes(session)] == ["RACE"]
    finally:
        engine.dispose()
