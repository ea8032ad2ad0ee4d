"""Builds the long-lived objects of a process (engine, store, ingest) from the settings.

The composition root of ingest: it subscribes the features that follow a stored instance to
ingest's events (``pacs.ingest.events``), so ingest imports none of them.
"""

from __future__ import annotations

from pacs import changes
from pacs.config import FsyncPolicy, Settings
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService
from pacs.ingest.events import IngestEvents
from pacs.jobs.lifecycle import StudyLifecycle
from pacs.storage import open_store
from pacs.storage.base import ObjectStore


def build_ingest(settings: Settings, store: ObjectStore | None = None) -> IngestService:
    """The ingest service for this process, on the configured index and object store (or on
    a ``store`` the process already holds). It gets an engine of its own: its SQLite
    connections commit in group-commit mode (see ``wal_group_commit``)."""
    return IngestService(
        store=store if store is not None else open_store(settings),
        engine=create_index_engine(settings),
        duplicate_policy=settings.duplicate_policy,
        identity_conflict=settings.identity_conflict,
        max_object_size=settings.max_object_size,
        durable_commits=settings.storage_fsync is FsyncPolicy.ALWAYS,
        events=ingest_events(settings),
    )


def ingest_events(settings: Settings) -> IngestEvents:
    """The subscribers of ingest's events: the change feed, and the study lifecycle when
    ``study_lifecycle`` is on."""
    events = IngestEvents(changes.on_ingest)
    if settings.study_lifecycle:
        events.subscribe(StudyLifecycle.from_settings(settings).on_instance)
    return events
