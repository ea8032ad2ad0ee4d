"""The audit trail's hash chain (pacs.audit.chain) on SQLite and PostgreSQL: writers insert
unsealed rows, sealers chain them (concurrent writers and sealers included, every row sealed
exactly once); ``verify`` seals first; a modified, deleted or smuggled-in sealed row is
detected, by the function and by ``pacs audit verify``."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from pacs.audit import Access, Protocol, record, seal_on, verify
from pacs.audit.tables import AuditChain, AuditEvent
from pacs.cli import app as cli
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import alembic_config, upgrade
from pacs.jobs.background import Background
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
    [
        "modify",
        "delete-middle",
        "delete-last",
        "insert-unchained",
        "insert-hashed",
        "modify-outcome",
    ],
)
def test_tampering_is_detected(engine: Engine, tamper: str) -> None:
    write(engine, 5)
    assert seal_on(engine) == 5
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
        elif tamper == "insert-unchained":  # passed off as older than the chain
            values = {"user_name": "x", "action": "read", "resource": "/x", "hash": ""}
            conn.execute(insert(row).values(**values))
        else:
            values = {"user_name": "x", "action": "read", "resource": "/x", "hash": "0" * 64}
            conn.execute(insert(row).values(**values))
    with engine.connect() as conn:
        result = verify(conn)
    assert not result.ok
    expected = {
        "modify": (3, "modified"),
        "modify-outcome": (2, "modified"),
        "delete-middle": (3, "missing"),
        "delete-last": (5, "missing"),
        "insert-unchained": (None, "without a chain position"),
        "insert-hashed": (None, "without a chain position"),
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


def _head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(select(AuditChain.seq, AuditChain.hash)).one()
    return int(row[0]), str(row[1])


def test_writers_insert_unsealed_and_the_sealer_chains_them(engine: Engine) -> None:
    write(engine, 3)
    with engine.connect() as conn:
        assert conn.execute(select(AuditEvent.seq, AuditEvent.hash)).all() == [(None, None)] * 3
    assert _head(engine) == (0, "")
    assert seal_on(engine, limit=2) == 3  # two transactions
    write(engine, 2)
    assert seal_on(engine) == 2 and seal_on(engine) == 0
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.pk)).all()
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
    assert _head(engine) == (5, rows[-1][1])
    with engine.connect() as conn:
        assert verify(conn).checked == 5


def test_verify_seals_first(engine: Engine) -> None:
    write(engine, 3)
    with engine.connect() as conn:
        result = verify(conn, batch=2)
    assert result.ok and result.checked == 3, result
    assert _head(engine)[0] == 3


def test_rows_older_than_the_chain_are_never_sealed(engine: Engine) -> None:
    with engine.begin() as conn:  # what migration 0017 marks: written before 0014
        conn.execute(
            insert(AuditEvent.__table__).values(
                user_name="old", action="read", resource="/o", hash=""
            )
        )
    write(engine, 2)
    with engine.connect() as conn:
        result = verify(conn)
        old = conn.execute(select(AuditEvent.seq).where(AuditEvent.user_name == "old")).scalar()
    assert result.ok and result.checked == 2 and result.unchained == 1, result
    assert old is None


def test_migration_marks_rows_older_than_the_chain(db_backend: Backend) -> None:
    engine = create_index_engine(db_backend.settings)
    command.downgrade(alembic_config(engine), "0015")  # the fixture's database is at head
    with engine.begin() as conn:
        values = {"user_name": "old", "action": "read", "resource": "/o"}
        conn.execute(insert(AuditEvent.__table__).values(**values))
    upgrade(engine)
    write(engine, 1)
    with engine.connect() as conn:
        assert conn.scalar(select(AuditEvent.hash).where(AuditEvent.user_name == "old")) == ""
        result = verify(conn)
    assert result.ok and result.checked == 1 and result.unchained == 1, result
    engine.dispose()


def test_concurrent_writers_and_sealers_seal_every_row_once(
    engine: Engine, db_backend: Backend
) -> None:
    writers, sealers, each = 4, 2, 20
    engines = [create_index_engine(db_backend.settings) for _ in range(writers + sealers)]
    done = threading.Event()
    sealed: list[int] = []

    def sealer(e: Engine) -> None:
        while not done.is_set():
            sealed.append(seal_on(e, limit=7))
        sealed.append(seal_on(e, limit=7))

    threads = [threading.Thread(target=sealer, args=(e,)) for e in engines[writers:]]
    for thread in threads:
        thread.start()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda e: write(e[1], each, f"user{e[0]}"), enumerate(engines[:writers])))
    done.set()
    for thread in threads:
        thread.join()
    with engine.connect() as conn:
        seqs = conn.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert sum(sealed) == writers * each  # each row sealed by exactly one sealer
    assert seqs == list(range(1, writers * each + 1))
    with engine.connect() as conn:
        result = verify(conn)
    assert result.ok and result.checked == writers * each, result
    for e in engines:
        e.dispose()


def test_the_background_loop_seals(engine: Engine, db_backend: Backend) -> None:
    write(engine, 2)
    background = Background(db_backend.settings, worker=False)
    try:
        background.tick()
    finally:
        background.engine.dispose()
    assert _head(engine)[0] == 2
