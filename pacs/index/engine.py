"""Engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from pacs.config import FsyncPolicy, Settings

WRITE = {"pacs_write": True}
"""Execution options of a write transaction: ``BEGIN IMMEDIATE`` on SQLite."""


def create_index_engine(settings: Settings) -> Engine:
    """Create the engine for ``settings.resolved_database_url``.

    SQLite runs in WAL mode with a busy timeout, so several processes (the DICOM server
    processes, the HTTP API, the CLI) can share one file; write transactions start with
    ``BEGIN IMMEDIATE`` so that they queue for the lock instead of failing on upgrade.
    """
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
            pool_pre_ping=True,
        )
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
    synchronous = "FULL" if settings.storage_fsync is FsyncPolicy.ALWAYS else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("pacs_write")
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class SQLiteWriterQueue:
    """Queues the SQLite writers of every process on one ``flock``.

    SQLite's own busy handler retries a locked database after sleeping 1, 2, 5, 10, 15 ...
    ms, so concurrent writers from several DICOM server processes stall each other for many
    milliseconds; a waiter on ``flock`` (and on the in-process lock) wakes the moment the
    holder is done, so ``BEGIN IMMEDIATE`` then never waits.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-writer")
        self._threads = threading.Lock()
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the write turn of this database for the duration of the block."""
        with self._threads:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


_QUEUES: dict[str, SQLiteWriterQueue] = {}
_QUEUES_LOCK = threading.Lock()


def writer_turn(engine: Engine) -> AbstractContextManager[None]:
    """Context manager around one write transaction: queues SQLite writers across processes
    (see ``SQLiteWriterQueue``); PostgreSQL needs nothing (row locks wait properly)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return contextlib.nullcontext()
    with _QUEUES_LOCK:
        queue = _QUEUES.setdefault(database, SQLiteWriterQueue(Path(database)))
    return queue.hold()


def wal_group_commit(engine: Engine) -> Callable[[], None] | None:
    """Group commit for a SQLite file database.

    New connections of ``engine`` commit without syncing (``synchronous=NORMAL``: the WAL is
    written, not flushed); the returned function flushes the WAL, which makes every
    transaction committed so far durable. Called after commit and outside the writer queue,
    concurrent callers in every process share one flush instead of each holding the write
    lock through its own. Checkpoints stay safe: with NORMAL, SQLite syncs the WAL before a
    checkpoint and the database after it. None for other databases (PostgreSQL commits are
    durable and group-committed by the server).
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None

    @event.listens_for(engine, "connect")
    def _no_sync_on_commit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    wal = f"{database}-wal"

    def flush() -> None:
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the database file was synced by SQLite
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    return flush


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose sessions keep loaded attributes after commit."""
    return sessionmaker(engine, expire_on_commit=False)
