"""The audit trail's hash chain (pacs.audit.chain) on SQLite and PostgreSQL: intact after
appends, concurrent writers included; a modified, deleted or smuggled-in row is detected, by
the function and by ``pacs audit verify``."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from pacs.audit import Access, Protocol, record, verify
from pacs.audit.tables import AuditEvent
from pacs.cli import app as cli
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from tests.conftest import Backend


@pytest.fixture
def engine(db_backend: Backend) -> Iterator[Engine]:
    engine = create_index_engine(db_backend.settings)
    upgrade(engine)
    yield engine
    engine.dispose()


def write(engine: Engine, count: int, user: str = "dr.ivanova") -> None:
    with Session(engine) as session:
        for i in range(count):
            access = Access(
                user,
                "read",
                f"/dicomweb/studies/1.2.{i}",
                client_address="10.0.0.7",
                protocol=Protocol.DICOMWEB,
                patient=f"P{i % 3}",
                study=f"1.2.{i}",
                organisation="org-a",
            )
            record(session, access)


def test_appends_form_an_intact_chain(engine: Engine) -> None:
    write(engine, 5)
    with engine.connect() as conn:
        result = verify(conn)
        seqs = conn.scalars(select(AuditEvent.seq).order_by(AuditEvent.pk)).all()
    assert result.ok and result.checked == 5 and result.unchained == 0, result
    assert seqs == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "tamper",
    ["modify", "delete-middle", "delete-last", "insert-unchained", "modify-outcome"],
)
def test_tampering_is_detected(engine: Engine, tamper: str) -> None:
    write(engine, 5)
    row = AuditEvent.__table__
    with engine.begin() as conn:
        if tamper == "modify":
            conn.execute(update(row).where(row.c.seq == 3).values(patient_identifier="P9"))
        elif tamper == "modify-outcome":
            conn.execute(update(row).where(row.c.seq == 2).values(outcome=404))
        elif tamper == "delete-middle":
            conn.execute(delete(row).where(row.c.seq == 3))
        elif tamper == "delete-last":
            conn.execute(delete(row).where(row.c.seq == 5))
        else:
            conn.execute(insert(row).values(user_name="x", action="read", resource="/x"))
    with engine.connect() as conn:
        result = verify(conn)
    assert not result.ok
    expected = {
        "modify": (3, "modified"),
        "modify-outcome": (2, "modified"),
        "delete-middle": (3, "missing"),
        "delete-last": (5, "missing"),
        "insert-unchained": (None, "without a chain position"),
    }[tamper]
    assert result.seq == expected[0] and expected[1] in result.problem, result


def test_concurrent_writers_keep_one_valid_chain(engine: Engine, db_backend: Backend) -> None:
    writers, each = 4, 25
    engines = [create_index_engine(db_backend.settings) for _ in range(writers)]
    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda e: write(e[1], each, f"user{e[0]}"), enumerate(engines)))
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        result = verify(conn)
    assert result.ok and result.checked == writers * each, result
    assert elapsed < 60, f"{writers * each} audit records took {elapsed:.1f} s"
    for e in engines:
        e.dispose()


def _process_writer(args: tuple[dict[str, object], int, str]) -> None:
    """One writer process: its own engine on the same database."""
    fields, count, user = args
    engine = create_index_engine(Settings(**fields))  # type: ignore[arg-type]
    write(engine, count, user)
    engine.dispose()


def test_concurrent_processes_keep_one_valid_chain(engine: Engine, db_backend: Backend) -> None:
    processes, each = 3, 15
    fields = db_backend.settings.model_dump()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_process_writer, [(fields, each, f"process{n}") for n in range(processes)])
    with engine.connect() as conn:
        result = verify(conn)
        users = conn.scalars(select(AuditEvent.user_name).order_by(AuditEvent.seq)).all()
    assert result.ok and result.checked == processes * each, result
    assert {u: users.count(u) for u in set(users)} == {f"process{n}": each for n in range(3)}


def test_cli_verify(db_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in db_backend.env.items():
        monkeypatch.setenv(name, value)
    engine = create_index_engine(db_backend.settings)
    upgrade(engine)
    write(engine, 3)
    runner = CliRunner()
    good = runner.invoke(cli, ["audit", "verify"])
    assert good.exit_code == 0 and "intact: 3 record(s)" in good.output, good.output
    with engine.begin() as conn:
        conn.execute(update(AuditEvent.__table__).values(client_address="1.2.3.4"))
    bad = runner.invoke(cli, ["audit", "verify"])
    assert bad.exit_code == 1 and "modified" in bad.output, bad.output
    engine.dispose()


def test_control_characters_are_stored_as_question_marks(engine: Engine) -> None:
    """A hostile parameter (NUL, which PostgreSQL refuses in text) never fails the record."""
    with Session(engine) as session:
        record(session, Access("x", "search", "/dicomweb/studies", patient="A\x00B\nC"))
    with engine.connect() as conn:
        assert conn.scalar(select(AuditEvent.patient_identifier)) == "A?B?C"
        assert verify(conn).ok
