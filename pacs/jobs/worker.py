"""Job workers: threads that claim jobs, run their analysis and record the outcome.

A ``Worker`` runs ``concurrency`` slots in one process; per-analysis limits keep, for
example, GPU-bound analyses to one at a time per process. A heartbeat thread renews the lease
of every running job every third of the lease, so a job of a live worker is never taken over;
when the process dies, its leases expire and the reaper hands the jobs to other workers. An
analysis that raises is retried with backoff (``failed``) until its attempts run out
(``dead``); an analysis that cannot be imported fails its job at once, never the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from pacs.config import Settings
from pacs.index.engine import WRITE
from pacs.ingest import IngestService
from pacs.jobs import JobError, metrics
from pacs.jobs import queue as jobs
from pacs.jobs.analysis import AnalysisContext, AnalysisRefused, AnalysisResult, JobCancelled
from pacs.jobs.registry import UnknownAnalysisError, resolve

log = logging.getLogger(__name__)


def _close(conn: Connection | None) -> None:
    """Close a slot's connection, whatever state it is in."""
    if conn is not None:
        try:
            conn.close()
        except Exception as exc:  # already broken
            log.debug("closing a job slot connection: %s", exc)


def backoff_of(settings: Settings) -> jobs.Backoff:
    """The retry backoff of failed jobs."""
    return jobs.Backoff(settings.job_retry_base_seconds, settings.job_retry_max_seconds)


class Worker:
    """Runs jobs in ``concurrency`` threads of this process until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ingest: IngestService,
        concurrency: int | None = None,
        limits: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.ingest = ingest
        self.concurrency = concurrency or settings.worker_concurrency
        self.limits = dict(settings.worker_analysis_limits) if limits is None else limits
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = settings.job_lease_seconds
        self.backoff = backoff_of(settings)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, jobs.ClaimedJob] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the slots and the heartbeat thread."""
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._slot, name=f"job-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._heartbeats, name="job-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)
        log.info("job worker %s: %d slot(s), limits %s", self.owner, self.concurrency, self.limits)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running jobs finish (up to ``timeout`` seconds)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _busy(self) -> set[str]:
        """Analyses at their limit in this process (call with the lock held)."""
        counts = Counter(job.analysis for job in self._running.values())
        return {name for name, limit in self.limits.items() if counts[name] >= limit}

    def _slot(self) -> None:
        """One slot: claim, run, record, on a connection of its own (no pool checkout and
        ping per statement); a database error closes it and the next round opens another."""
        conn: Connection | None = None
        while not self._stop.is_set():
            job = None
            try:
                conn = conn or self._connect()
                job = self._claim(conn)
                if job is not None:
                    self.run(job, conn)
            except Exception as exc:  # database down: keep trying, never die
                log.error("job slot: %s: %s", type(exc).__name__, exc)
                _close(conn)
                conn = None
                self._stop.wait(self.settings.worker_poll_seconds)
            finally:
                if job is not None:
                    with self._lock:
                        self._running.pop(job.pk, None)
            if job is None:
                self._idle()
        _close(conn)

    def wake(self) -> None:
        """New jobs were queued (by this process's sweeper): look now, not at the next poll."""
        self._wake.set()

    def _idle(self) -> None:
        if self._wake.wait(self.settings.worker_poll_seconds):
            self._wake.clear()

    def _connect(self) -> Connection:
        """A slot's connection: autocommit on PostgreSQL, where a claim or a completion is
        one statement (one round trip); a write connection on SQLite."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # Claims and completions need not wait for the WAL flush: a PostgreSQL crash may
            # lose the last few, and those jobs run again (analyses are idempotent; their
            # outputs are committed durably by ingest).
            conn.exec_driver_sql("SET synchronous_commit = off")
            conn.commit()  # ends SQLAlchemy's autobegun (logical) transaction
            return conn
        return self.engine.connect().execution_options(**WRITE)

    def _claim(self, conn: Connection) -> jobs.ClaimedJob | None:
        with self._lock:
            busy = self._busy()
        # SQLite: a read first, so idle workers never take the write lock
        if self.engine.dialect.name == "sqlite" and not jobs.has_claimable(self.engine, busy):
            return None
        with self._lock:  # claims of one process one at a time, so limits hold
            job = jobs.claim(conn, self.owner, self.lease, self._busy())
            if job is not None:
                self._running[job.pk] = job
        return job

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                running = list(self._running.values())
            for job in running:
                try:
                    jobs.renew(self.engine, job.pk, self.owner, self.lease)
                except Exception as exc:
                    log.error("renewing the lease of job %d failed: %s", job.pk, exc)

    def context(self, job: jobs.ClaimedJob) -> AnalysisContext:
        """The context an analysis of ``job`` runs with."""

        def heartbeat() -> None:
            held, cancel = jobs.renew(self.engine, job.pk, self.owner, self.lease)
            if not held:
                raise JobError(f"job {job.pk}: lease lost to another worker")
            if cancel:
                raise JobCancelled(f"job {job.pk} cancelled by an operator")

        return AnalysisContext(
            job_id=job.pk,
            analysis=job.analysis,
            study_instance_uid=job.study_instance_uid,
            series_instance_uids=list(job.series_instance_uids),
            study_version=job.study_version,
            settings=self.settings,
            engine=self.engine,
            store=self.ingest.store,
            ingest=self.ingest,
            heartbeat=heartbeat,
            options=dict(job.options or {}),
        )

    def run(self, job: jobs.ClaimedJob, conn: Connection | None = None) -> str:
        """Run one claimed job to its outcome; returns the job's new status."""
        bind: jobs.Bind = conn if conn is not None else self.engine
        # several statements in one transaction: not on an autocommit connection
        atomic: jobs.Bind = self.engine if self.engine.dialect.name == "postgresql" else bind
        started = time.perf_counter()
        status: str | None
        try:
            analysis: Callable[[AnalysisContext], AnalysisResult] = resolve(job.analysis)
            result = analysis(self.context(job))
        except JobCancelled:
            status = jobs.CANCELLED if jobs.cancelled(atomic, job, self.owner) else None
        except (UnknownAnalysisError, AnalysisRefused) as exc:
            log.warning("job %d (%s) refused: %s", job.pk, job.analysis, exc)
            status = jobs.fail(atomic, job, self.owner, str(exc), self.backoff, True)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            log.warning(
                "job %d (%s) attempt %d failed: %s", job.pk, job.analysis, job.attempts, detail
            )
            status = jobs.fail(atomic, job, self.owner, detail, self.backoff, False)
        else:
            summary = {
                "output_sop_instance_uids": list(result.output_sop_instance_uids),
                "summary": result.summary,
            }
            ok = jobs.complete(bind, job, self.owner, summary)
            status = jobs.SUCCEEDED if ok else None
        seconds = time.perf_counter() - started
        if status is None:
            log.warning("job %d: lease lost before it ended; another worker owns it", job.pk)
            status = "lost"
        metrics.record_job(job.analysis, status, seconds)
        return status
