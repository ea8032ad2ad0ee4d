"""Builds the long-lived objects of a process (engine, store, ingest) from the settings."""

from __future__ import annotations

from sqlalchemy import Engine

from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService
from pacs.storage import open_store
from pacs.storage.base import ObjectStore


def build_ingest(
    settings: Settings, engine: Engine | None = None, store: ObjectStore | None = None
) -> IngestService:
    """The ingest service for this process, on the configured index and object store
    (or on an ``engine`` and ``store`` the process already holds)."""
    return IngestService(
        store=store if store is not None else open_store(settings),
        engine=engine if engine is not None else create_index_engine(settings),
        duplicate_policy=settings.duplicate_policy,
        max_object_size=settings.max_object_size,
    )
