"""Which archive a command-line tool opens, and refusing to make an empty one by accident.

Run outside the archive's directory, ``pacs ae add`` used to create ``./var/index.sqlite3``
there: an empty archive the running server never sees. Every command that opens the archive
(except ``serve``, ``scp`` and ``import``, which start or fill one) prints the data dir and
database it uses to stderr, and refuses to create the embedded SQLite index unless ``--init``
is given. A server database (``PACS_DATABASE_URL``) is never created by a command, only migrated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from pacs.config import Settings

Init = Annotated[
    bool,
    typer.Option("--init", help="Create a new, empty archive if there is none at the data dir."),
]

EXIT_NO_ARCHIVE = 2


def embedded_index(settings: Settings) -> Path | None:
    """The SQLite index file of ``settings``; None for a server database or in-memory SQLite."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def describe(settings: Settings) -> str:
    """One line naming the data dir and the database (password hidden)."""
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    return f"data dir {settings.data_dir.resolve()}, database {database}"


def open_archive(settings: Settings, init: bool) -> Settings:
    """Print which archive ``settings`` open; exit 2 when the embedded index does not exist
    and ``init`` is false (nothing is created then)."""
    typer.echo(f"pacs: {describe(settings)}", err=True)
    index = embedded_index(settings)
    if index is not None and not index.is_file() and not init:
        typer.echo(
            f"error: no archive at {settings.data_dir.resolve()} ({index.name} missing). "
            "Run in the archive's directory, pass --data-dir or set PACS_DATA_DIR, "
            "or pass --init to create a new, empty archive there.",
            err=True,
        )
        raise typer.Exit(EXIT_NO_ARCHIVE)
    return settings
