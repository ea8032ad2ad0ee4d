"""Engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

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
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose sessions keep loaded attributes after commit."""
    return sessionmaker(engine, expire_on_commit=False)
