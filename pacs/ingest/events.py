"""What ingest announces: typed events, delivered inside the index transaction.

Ingest knows nothing of what follows a stored instance; the composition root
(``pacs.runtime.build_ingest``) subscribes the change feed, the study lifecycle and whatever
comes next. Every subscriber runs on ingest's connection, in its write transaction, after the
instance row: what it writes commits or rolls back with the instance, and an exception it
raises fails the ingest call (nothing half-stored). Events of one instance come in this order:
``SeriesAdded`` (only from the transaction that created the series), then ``InstanceStored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.derived import is_derived
from pacs.ingest.source import Source


@dataclass(frozen=True, slots=True)
class SeriesAdded:
    """The instance ``attrs`` created its series."""

    attrs: InstanceAttributes
    source: Source


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """An instance was indexed; ``derived``: it is no new source image (``pacs.ingest.derived``)."""

    attrs: InstanceAttributes
    source: Source
    derived: bool


IngestEvent = SeriesAdded | InstanceStored
Subscriber = Callable[[Connection, IngestEvent], None]
"""Called with ingest's connection (inside its write transaction) and one event."""


class IngestEvents:
    """The subscribers of ingest's events, called in subscription order."""

    def __init__(self, *subscribers: Subscriber) -> None:
        self.subscribers: list[Subscriber] = list(subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber`` for every event from now on."""
        self.subscribers.append(subscriber)

    def instance_indexed(
        self, conn: Connection, attrs: InstanceAttributes, source: Source, new_series: bool
    ) -> None:
        """Announce one indexed instance (and its series, if it created it)."""
        if not self.subscribers:
            return
        if new_series:
            self._emit(conn, SeriesAdded(attrs, source))
        self._emit(conn, InstanceStored(attrs, source, is_derived(attrs, source)))

    def _emit(self, conn: Connection, event: IngestEvent) -> None:
        for subscriber in self.subscribers:
            subscriber(conn, event)
