"""The change feed: record inside the caller's transaction, read in order, never skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from pacs.changes import last_seq, read_since, record
from pacs.index.engine import WRITE, create_index_engine
from tests.conftest import Backend


@pytest.fixture
def engine(db_backend: Backend) -> Iterator[Engine]:
    engine = create_index_engine(db_backend.settings)
    yield engine
    engine.dispose()


def test_record_and_read_in_order(engine: Engine) -> None:
    with engine.begin() as conn:
        record(conn, "study.stable", study_instance_uid="1.2.3", payload={"version": 1})
        record(conn, "instance.stored", study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4")
    with engine.begin() as conn:
        record(conn, "job.queued", payload={"job_id": 7})
    with engine.connect() as conn:
        events = read_since(conn, 0)
        assert [e.kind for e in events] == ["study.stable", "instance.stored", "job.queued"]
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert events[0].payload == {"version": 1}
        assert events[1].payload is None and events[1].sop_instance_uid == "1.2.3.4"
        assert [e.kind for e in read_since(conn, events[0].seq, limit=1)] == ["instance.stored"]
        assert [e.kind for e in read_since(conn, 0, kinds={"job.queued"})] == ["job.queued"]
        assert read_since(conn, events[-1].seq) == []
        assert last_seq(conn) == events[-1].seq


def test_rolled_back_events_do_not_exist(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as tx:
        record(conn, "object.deleted", sop_instance_uid="9.9")
        tx.rollback()
    with engine.connect() as conn:
        assert read_since(conn, 0) == []


def test_unknown_kind_is_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="unknown change kind"):
        record(conn, "study.exploded")


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_late_commit_is_not_skipped(engine: Engine) -> None:
    """An event inserted first but committed last is still read after the earlier commits
    (PostgreSQL publishes in commit-safe order; SQLite serialises writers)."""
    slow = engine.connect().execution_options(**WRITE)
    tx = slow.begin()
    record(slow, "instance.stored", sop_instance_uid="1.1")  # inserted first, not committed
    with engine.begin() as conn:
        record(conn, "instance.stored", sop_instance_uid="2.2")
    with engine.connect() as conn:
        seen = read_since(conn, 0)
    assert [e.sop_instance_uid for e in seen] == ["2.2"]
    tx.commit()
    slow.close()
    with engine.connect() as conn:
        later = read_since(conn, seen[-1].seq)
    assert [e.sop_instance_uid for e in later] == ["1.1"]
