"""Statements of the ingest hot path, compiled once per dialect and run on the DBAPI cursor.

SQLAlchemy Core spends 20-30 µs per execution on cache keys, parameter processing and result
set-up, which is a large share of an instance's ingest time; a handful of fixed statements
does not need any of it. They are still written as SQLAlchemy Core (one source for SQLite
and PostgreSQL) and run inside the caller's SQLAlchemy transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    """One Core statement, compiled lazily per dialect to ``(sql, parameter names)``."""

    def __init__(self, statement: ClauseElement, column_keys: list[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = column_keys
        self._compiled: dict[str, tuple[str, list[str] | None]] = {}

    def _compile(self, conn: Connection) -> tuple[str, list[str] | None]:
        dialect = conn.dialect
        compiled = cast(
            SQLCompiler, self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        )
        names = list(compiled.positiontup or []) if compiled.positional else None
        self._compiled[dialect.name] = (str(compiled), names)
        return self._compiled[dialect.name]

    def execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Run with ``params`` on the connection's DBAPI cursor; return the cursor."""
        sql, names = self._compiled.get(conn.dialect.name) or self._compile(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        arguments = params if names is None else [params[name] for name in names]
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            cursor.execute(sql, arguments)
        except dbapi_error as exc:  # the same exception classes Core would raise
            raise DBAPIError.instance(sql, arguments, exc, dbapi_error) from exc
        return cursor


def db_timestamp(conn: Connection, value: datetime) -> Any:
    """``value`` as the DBAPI expects it, as SQLAlchemy's DateTime would bind it."""
    if conn.dialect.name == "sqlite":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
