"""The background work every archive process runs: sweeper, reaper, audit sealer, webhooks,
a worker.

``pacs serve``, ``pacs scp`` and ``pacs worker`` each start one ``Background``. Its threads
poll the index; the database (row locks, ``SKIP LOCKED``, leases) decides which process does
each piece of work, so any number of processes may run against one PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy import Engine

from pacs.audit import seal_on
from pacs.changes import publish
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService
from pacs.jobs import metrics as job_metrics
from pacs.jobs.queue import queue_stats, reap
from pacs.jobs.rules import RuleBook
from pacs.jobs.sweeper import sweep
from pacs.jobs.webhooks import WebhookSender
from pacs.jobs.worker import Worker, backoff_of

log = logging.getLogger(__name__)

STATS_INTERVAL = 2.0  # seconds between queue gauge refreshes
PUBLISH_INTERVAL = 5.0  # seconds between change-feed publications by the sweeper


def check_settings(settings: Settings) -> RuleBook:
    """Load the rules; raises RulesError with a message naming the problem (the process
    should not start). The lifecycle and job settings were parsed by :class:`Settings`."""
    return RuleBook(settings.rules_file)


class Background:
    """Sweeper + reaper + audit sealer thread, webhook sender and (optionally) a job worker."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool,
        ingest: IngestService | None = None,
        concurrency: int | None = None,
        limits: dict[str, int] | None = None,
        rules: RuleBook | None = None,
    ) -> None:
        """``worker``: run a job worker too, storing what it derives through ``ingest``
        (required then; ``pacs.runtime.build_ingest``)."""
        if worker and ingest is None:
            raise ValueError("a job worker needs the ingest service")
        self.settings = settings
        self.rules = rules or check_settings(settings)
        self.engine: Engine = create_index_engine(settings)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.webhooks = WebhookSender(settings, self.engine, self.owner)
        self.worker: Worker | None = None
        if worker and ingest is not None:
            self.worker = Worker(
                settings,
                self.engine,
                ingest,
                concurrency=concurrency,
                limits=limits,
            )
        self._stop = threading.Event()
        self._next_publish = 0.0
        self._next_seal = 0.0
        self._thread = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)

    def start(self) -> None:
        """Start every thread."""
        self.webhooks.sync_configured()
        self._thread.start()
        self.webhooks.start()
        if self.worker is not None:
            self.worker.start()

    def stop(self) -> None:
        """Stop the threads (running jobs get up to 30 s to finish)."""
        self._stop.set()
        if self.worker is not None:
            self.worker.stop()
        self.webhooks.stop()
        self._thread.join(10)
        self.engine.dispose()

    def tick(self) -> None:
        """One round of the sweeper thread."""
        self.rules.reload_if_changed()
        if self.engine.dialect.name == "postgresql" and time.monotonic() >= self._next_publish:
            # Readers publish before they read (read_since); this only keeps the backlog of
            # unnumbered events short when nobody reads, without a synchronous commit per tick.
            with self.engine.begin() as conn:
                publish(conn)
            self._next_publish = time.monotonic() + PUBLISH_INTERVAL
        if self.settings.study_lifecycle:
            done = sweep(self.engine, self.rules.rules, self.settings.job_max_attempts)
            job_metrics.STUDIES_STABLE.inc(len(done))
            if self.worker is not None and any(item.job_ids for item in done):
                self.worker.wake()
        reap(self.engine, backoff_of(self.settings))
        if time.monotonic() >= self._next_seal:
            seal_on(self.engine)  # chain the audit records written since (any process's)
            self._next_seal = time.monotonic() + self.settings.audit_seal_interval

    def _sweep_loop(self) -> None:
        next_stats = 0.0
        while not self._stop.wait(self.settings.sweep_interval_seconds):
            try:
                self.tick()
                if time.monotonic() >= next_stats:
                    job_metrics.set_queue(queue_stats(self.engine))
                    next_stats = time.monotonic() + STATS_INTERVAL
            except Exception as exc:  # database down: keep trying, never die
                log.error("sweeper round failed: %s", exc)
