"""The EMR link's change-feed consumer: keeps ImagingStudy and AI reports in step.

It reads ``instance.stored``, ``series.added``, ``study.stable`` and ``object.deleted``
(project the study, once per batch however many instances arrived) and ``result.stored``
(publish the preliminary report) after the position stored in ``feed_position``, and
advances the position only once a batch is handled. Every write is an upsert, so a batch
handled twice (a crash before the position was saved) changes nothing; on PostgreSQL the
consumers of several nodes take turns (an advisory lock), so one works at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from pacs.changes import ChangeEvent, read_since
from pacs.config import Settings
from pacs.emr import EmrLinkError
from pacs.emr.positions import load_position, save_position
from pacs.emr.projection import dicomweb_endpoint, project_study
from pacs.emr.report import publish_result
from pacs.fhir.errors import FhirError
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine

log = logging.getLogger(__name__)

CONSUMER = "emr-link"
"""Name of this consumer's row in ``feed_position``."""
STUDY_KINDS = frozenset({"instance.stored", "series.added", "study.stable", "object.deleted"})
KINDS = STUDY_KINDS | {"result.stored"}
BATCH = 500
FEED_LOCK = 0x454D524C  # PostgreSQL advisory lock key of the consumer ("EMRL")


def base_url(settings: Settings) -> str:
    """The archive's public HTTP base URL (DICOMweb endpoint address)."""
    return settings.public_base_url or f"http://{settings.host}:{settings.http_port}"


class EmrFeed:
    """One consumer of the change feed on ``engine``, writing to ``store``."""

    def __init__(self, engine: Engine, store: FhirStore, public_url: str) -> None:
        self.engine = engine
        self.store = store
        self.public_url = public_url
        self._endpoint: str | None = None

    def position(self) -> int:
        """The last handled ``seq``."""
        return load_position(self.engine, CONSUMER)

    @contextmanager
    def _turn(self) -> Iterator[bool]:
        """Whether this consumer may work now: on PostgreSQL one consumer of all the nodes
        at a time (a session advisory lock, not waited for); on SQLite always."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": FEED_LOCK}))
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FEED_LOCK})
                    conn.commit()

    def run_once(self) -> int:
        """Handle the next batch of events; returns how many were read (0 also when another
        node's consumer has the turn)."""
        with self._turn() as mine:
            return self._run_batch() if mine else 0

    def _run_batch(self) -> int:
        since = self.position()
        with self.engine.connect() as conn:
            events = read_since(conn, since, limit=BATCH, kinds=set(KINDS))
        if not events:
            return 0
        self.handle(events)
        save_position(self.engine, CONSUMER, since, events[-1].seq)
        return len(events)

    def handle(self, events: list[ChangeEvent]) -> None:
        """Project each study touched by ``events`` once, then publish each stored result."""
        if self._endpoint is None:
            self._endpoint = dicomweb_endpoint(self.store, self.public_url)
        endpoint = self._endpoint
        studies = list(
            dict.fromkeys(
                e.study_instance_uid
                for e in events
                if e.kind in STUDY_KINDS and e.study_instance_uid
            )
        )
        results = list(
            dict.fromkeys(
                int((e.payload or {})["result_pk"])
                for e in events
                if e.kind == "result.stored" and "result_pk" in (e.payload or {})
            )
        )
        with Session(self.engine) as session:
            for study_uid in studies:
                self._guarded(partial(project_study, session, self.store, study_uid, endpoint))
                session.rollback()
            for result_pk in results:
                self._guarded(partial(publish_result, session, self.store, result_pk, endpoint))
                session.rollback()

    @staticmethod
    def _guarded(work: Callable[[], object]) -> None:
        """Run ``work``; a resource the FHIR layer refuses is logged and skipped (it would
        be refused again), while database errors propagate so the batch is retried."""
        try:
            work()
        except (FhirError, EmrLinkError) as exc:
            log.error("EMR link: change skipped, refused: %s", exc)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            try:
                busy = self.run_once() == BATCH
            except SQLAlchemyError as exc:
                log.warning("EMR link: index unavailable (%s); retrying", type(exc).__name__)
                busy = False
            except Exception:
                log.exception("EMR link: batch failed; retrying")
                busy = False
            if not busy:
                stop.wait(interval)


def start_emr_feed(settings: Settings) -> Callable[[], None]:
    """Run the consumer on a daemon thread of this process; returns a function that stops it
    (a no-op when ``PACS_EMR_FEED`` is off)."""
    if not settings.emr_feed:
        return lambda: None
    engine = create_index_engine(settings)
    feed = EmrFeed(engine, FhirStore(engine), base_url(settings))
    stop = threading.Event()
    thread = threading.Thread(
        target=feed.run, args=(stop, settings.emr_feed_interval), name="emr-feed", daemon=True
    )
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)
        engine.dispose()

    return halt
