"""Ingest's events: typed, in order, inside the index transaction; a failing subscriber fails
the ingest call and leaves nothing behind."""

from __future__ import annotations

from pydicom.uid import generate_uid
from sqlalchemy import Connection

from pacs.index.models import Instance
from pacs.ingest import Source, StoreStatus
from pacs.ingest.derived import ARCHIVE_MANUFACTURER
from pacs.ingest.events import IngestEvent, InstanceStored, SeriesAdded
from pacs.runtime import build_ingest
from tests.conftest import Backend
from tests.jobs_helpers import events
from tests.test_ingest import assert_index_empty, ct, encode, rows

SOURCE = Source(channel="import", ae_title="MODALITY1")


def test_subscribers_see_series_then_instances_in_the_transaction(db_backend: Backend) -> None:
    ingest = build_ingest(db_backend.settings)
    seen: list[tuple[str, str, bool]] = []

    def subscriber(conn: Connection, event: IngestEvent) -> None:
        assert conn.in_transaction()
        derived = isinstance(event, InstanceStored) and event.derived
        seen.append((type(event).__name__, event.attrs.sop_instance_uid, derived))

    ingest.events.subscribe(subscriber)
    study, series = generate_uid(), generate_uid()
    first, second = ct(study, series, 0), ct(study, series, 1, Manufacturer=ARCHIVE_MANUFACTURER)
    for ds in (first, second):
        assert ingest.store_part10(encode(ds), SOURCE).status is StoreStatus.STORED
    assert ingest.store_part10(encode(first), SOURCE).status is StoreStatus.DUPLICATE
    assert seen == [
        ("SeriesAdded", first.SOPInstanceUID, False),
        ("InstanceStored", first.SOPInstanceUID, False),
        ("InstanceStored", second.SOPInstanceUID, True),  # the derived-object rule
    ]
    ingest.engine.dispose()


def test_a_failing_subscriber_fails_ingest_and_stores_nothing(db_backend: Backend) -> None:
    ingest = build_ingest(db_backend.settings)

    def broken(conn: Connection, event: IngestEvent) -> None:
        if isinstance(event, SeriesAdded):
            raise RuntimeError("subscriber failed")

    ingest.events.subscribe(broken)
    ds = ct(generate_uid(), generate_uid())
    outcome = ingest.store_part10(encode(ds), SOURCE)
    assert outcome.status is StoreStatus.FAILED and "RuntimeError" in outcome.reason
    assert_index_empty(db_backend.settings)
    assert rows(db_backend.settings, Instance) == []
    assert events(ingest.engine) == []  # the change feed's own record rolled back too
    ingest.engine.dispose()
