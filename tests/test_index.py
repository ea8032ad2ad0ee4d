"""The index schema: ``pacs db`` on empty databases, migrations equal the models, identity."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from pacs.cli import app
from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.index.migrate import alembic_config, current_revision, upgrade
from pacs.index.models import Patient, Study
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from pacs.schema import metadata
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend, require

TABLES = {"patient", "study", "series", "instance", "audit_event"}


def head_revision() -> str:
    """The newest migration."""
    engine = create_engine("sqlite://")
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables at all."""
    if request.param == "sqlite":
        path = tmp_path / "empty.sqlite3"
        path.touch()  # a zero-length file is an empty SQLite database
        yield f"sqlite:///{path}"
        return
    url = os.environ.get("PACS_TEST_DATABASE_URL", "")
    require(bool(url), "PACS_TEST_DATABASE_URL is not set")
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"pacs_empty_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        require(False, f"PostgreSQL unreachable: {exc}")
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def schema_diff(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the database equal the models."""
    engine = create_index_engine(Settings(database_url=url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_db_upgrade_cli_on_empty_database(empty_database: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"PACS_DATABASE_URL": empty_database, "PACS_DATA_DIR": str(tmp_path / "var")}
    head = head_revision()

    result = runner.invoke(app, ["db", "current"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "empty"

    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"index at revision {head}")

    engine = create_engine(empty_database)
    try:
        assert TABLES | {"alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()

    again = runner.invoke(app, ["db", "upgrade"], env=env)  # idempotent
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().endswith(f"index at revision {head}")

    result = runner.invoke(app, ["db", "current"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == head
    assert schema_diff(empty_database) == []


def test_db_upgrade_cli_uses_data_dir_by_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"PACS_DATABASE_URL": "", "PACS_DATA_DIR": str(tmp_path / "ignored")}
    args = ["db", "upgrade", "--data-dir", str(data_dir)]
    refused = CliRunner().invoke(app, args, env=env)
    assert refused.exit_code == 2 and "--init" in refused.stderr, refused.output
    assert not data_dir.exists()
    result = CliRunner().invoke(app, [*args, "--init"], env=env)
    assert result.exit_code == 0, result.output
    assert (data_dir / "index.sqlite3").is_file()
    assert not (tmp_path / "ignored").exists()
    current = CliRunner().invoke(app, ["db", "current", "--data-dir", str(data_dir)], env=env)
    assert current.stdout.strip() == head_revision()


def test_migrations_produce_exactly_the_models_schema(empty_database: str) -> None:
    assert schema_diff(empty_database) != []  # the comparison does see a missing schema
    engine = create_index_engine(Settings(database_url=empty_database))
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert schema_diff(empty_database) == []


def test_downgrade_to_base_and_back(empty_database: str) -> None:
    engine = create_index_engine(Settings(database_url=empty_database))
    try:
        upgrade(engine)
        command.downgrade(alembic_config(engine), "base")
        assert set(inspect(engine).get_table_names()) & TABLES == set()
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert schema_diff(empty_database) == []


def part10(**patient: str) -> bytes:
    """One small CT object of a new study for the given patient attributes."""
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=8, patient_id=patient.pop("id"))
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_patient_identity_is_id_within_issuer(db_backend: Backend) -> None:
    ingest = build_ingest(db_backend.settings)
    source = Source(channel="import")
    objects = [
        part10(id="12345", IssuerOfPatientID="HOSPITAL-A"),
        part10(id="12345", IssuerOfPatientID="HOSPITAL-B"),
        part10(id="12345", IssuerOfPatientID="HOSPITAL-A"),  # same patient, another study
        part10(id="12345"),  # no issuer at all: a third identity
    ]
    for data in objects:
        assert ingest.store_part10(data, source).status is StoreStatus.STORED

    engine = create_index_engine(db_backend.settings)
    with session_factory(engine)() as session:
        patients = session.execute(
            select(Patient.patient_id, Patient.issuer_of_patient_id, func.count(Study.pk))
            .join(Study, Study.patient_pk == Patient.pk)
            .group_by(Patient.pk)
            .order_by(Patient.issuer_of_patient_id)
        ).all()
        assert [tuple(p) for p in patients] == [
            ("12345", "", 1),
            ("12345", "HOSPITAL-A", 2),
            ("12345", "HOSPITAL-B", 1),
        ]
        session.add(Patient(patient_id="12345", issuer_of_patient_id="HOSPITAL-B"))
        with pytest.raises(IntegrityError):  # the database enforces the identity too
            session.commit()
    engine.dispose()


def test_fhir_string_exact_is_filled_for_resources_stored_before_it(empty_database: str) -> None:
    """Migration 0011 rebuilds the string rows of existing resources: ``:exact`` finds them."""
    from pacs.fhir.store import FhirStore

    engine = create_index_engine(Settings(database_url=empty_database))
    content = '{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"},'
    content += '"name":[{"family":"Иванова","given":["Анна"]}]}'
    try:
        upgrade(engine, "0009")
        with engine.begin() as conn:
            pk = conn.scalar(
                text(
                    "INSERT INTO fhir_resource (resource_type, id, version_id, last_updated,"
                    " deleted, content) VALUES ('Patient', 'p1', 1, CURRENT_TIMESTAMP, false,"
                    " :content) RETURNING pk"
                ),
                {"content": content},
            )
            conn.execute(
                text(
                    "INSERT INTO fhir_string (resource_pk, resource_type, param, value)"
                    " VALUES (:pk, 'Patient', 'family', 'иванова')"
                ),
                {"pk": pk},
            )
        upgrade(engine)
        store = FhirStore(engine)
        found = store.search("Patient", [("family:exact", "Иванова")])["entry"]
        assert [e["resource"]["id"] for e in found] == ["p1"]
        assert store.search("Patient", [("family:exact", "иванова")]).get("entry", []) == []
        assert len(store.search("Patient", [("given", "анна")])["entry"]) == 1
    finally:
        engine.dispose()
