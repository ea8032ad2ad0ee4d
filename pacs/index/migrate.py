"""Alembic migrations of the index, run programmatically (``pacs db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, inspect

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine, metadata: MetaData | None = None) -> Config:
    """An Alembic config bound to ``engine`` (no alembic.ini needed).

    ``metadata`` (every table: ``pacs.schema.metadata``) is needed only to autogenerate a
    revision; upgrades and downgrades run the revision scripts alone.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    config.attributes["metadata"] = metadata
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the index schema up to ``revision``."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
