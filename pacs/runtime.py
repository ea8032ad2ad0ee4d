"""Builds the long-lived objects of a process (engine, store, ingest) from the settings."""

from __future__ import annotations

from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService
from pacs.storage import open_store


def build_ingest(settings: Settings) -> IngestService:
    """The ingest service for this process, on the configured index and object store."""
    return IngestService(
        store=open_store(settings),
        engine=create_index_engine(settings),
        duplicate_policy=settings.duplicate_policy,
        max_object_size=settings.max_object_size,
    )
