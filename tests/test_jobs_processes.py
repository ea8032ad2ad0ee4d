"""Jobs across processes: several ``pacs worker`` processes on one PostgreSQL never run a job
twice at once and make each study stable once; a worker SIGKILLed mid-job is replaced after
its lease expires with the output stored once; ``pacs serve`` on SQLite runs the whole path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from pacs.index.engine import create_index_engine
from pacs.index.models import Instance, Series, Study
from pacs.jobs import queue
from pacs.runtime import build_ingest
from testkit import processes
from tests.conftest import Backend, make_backend, start_archive, stop_archive
from tests.jobs_helpers import count_jobs, events, jobs_of, rules_file, store_study, wait_for

# load-heavy and timing-sensitive tests share one xdist worker: no two of them run at once
pytestmark = pytest.mark.xdist_group("one-at-a-time")

NOOP_RULES = """\
rules:
  - name: every-ct
    analysis: noop
    when: {{modality: [CT]}}
    options: {{sleep_seconds: 0.05, log: "{log}"}}
"""
SLOW_TEST_RULES = """\
rules:
  - name: every-ct
    analysis: test
    when: {modality: [CT]}
    options: {sleep_seconds: 2.5}
"""


class Workers:
    """``pacs worker`` subprocesses against one backend."""

    def __init__(self, backend: Backend, tmp_path: Path, **env: str) -> None:
        self.env = {**os.environ, **backend.env, "PACS_LOG_LEVEL": "INFO", **env}
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> None:
        for i in range(n):
            with (self.tmp_path / f"worker{len(self.processes)}-{i}.log").open("ab") as log:
                self.processes.append(
                    processes.spawn(
                        [sys.executable, "-m", "pacs.cli", "worker"],
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.tmp_path,
                    )
                )
        wait_for(lambda: all(self._ready(i) for i in range(len(self.processes))), 60, "workers")

    def _ready(self, i: int) -> bool:
        process = self.processes[i]
        assert process.poll() is None, self.logs()
        return any(b"worker " in p.read_bytes() for p in self.tmp_path.glob(f"worker{i}-*.log"))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.tmp_path.glob("worker*.log"))

    def stop(self) -> None:
        for process in self.processes:  # all at once, then wait for each
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            processes.stop(process, timeout=15)


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path, "postgresql", "file")


@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_on_postgresql_run_each_job_once_and_each_study_stable_once(
    pg: Backend, tmp_path: Path, n_workers: int
) -> None:
    runs = tmp_path / "runs.log"
    rules = rules_file(tmp_path, NOOP_RULES.format(log=runs))
    workers = Workers(
        pg,
        tmp_path,
        PACS_RULES_FILE=str(rules),
        PACS_STABLE_AFTER_SECONDS="0.5",
        PACS_WORKER_CONCURRENCY="2",
        PACS_SWEEP_INTERVAL_SECONDS="0.05",
        PACS_WORKER_POLL_SECONDS="0.05",
    )
    settings = pg.with_settings(stable_after_seconds=0.5)
    ingest = build_ingest(settings)
    engine = create_index_engine(settings)
    try:
        workers.start(n_workers)
        studies = [store_study(ingest, slices=1) for _ in range(6)]
        with queue.write(engine) as conn:  # plus jobs without a study: contention on claims
            for version in range(1, 31):
                queue.enqueue(
                    conn,
                    analysis="noop",
                    study_instance_uid="9.9",
                    study_version=version,
                    series_instance_uids=[],
                    options={"log": str(runs)},
                )
        wait_for(lambda: count_jobs(engine, "succeeded") == 36, 90, "36 jobs done")
        time.sleep(1.0)  # any duplicate sweep or run would show up now
    finally:
        workers.stop()
        ingest.engine.dispose()
    stable = Counter(e.study_instance_uid for e in events(engine, "study.stable"))
    assert {s: stable[s] for s in studies} == dict.fromkeys(studies, 1)
    assert sorted(
        j.study_instance_uid for j in jobs_of(engine) if j.study_instance_uid != "9.9"
    ) == sorted(studies)
    lines = [line.split() for line in runs.read_text().splitlines()]
    per_job = Counter(int(line[0]) for line in lines)
    assert len(per_job) == 36 and set(per_job.values()) == {1}, per_job.most_common(3)
    assert all(j.attempts == 1 for j in jobs_of(engine))
    assert len({line[1] for line in lines}) >= 2  # the work was shared
    engine.dispose()


def test_sigkilled_worker_job_finished_by_another_after_lease_expiry(
    pg: Backend, tmp_path: Path
) -> None:
    rules = rules_file(tmp_path, SLOW_TEST_RULES)
    workers = Workers(
        pg,
        tmp_path,
        PACS_RULES_FILE=str(rules),
        PACS_STABLE_AFTER_SECONDS="0.2",
        PACS_JOB_LEASE_SECONDS="1.5",
        PACS_JOB_RETRY_BASE_SECONDS="0",
        PACS_SWEEP_INTERVAL_SECONDS="0.1",
        PACS_WORKER_POLL_SECONDS="0.1",
    )
    settings = pg.with_settings(stable_after_seconds=0.2)
    ingest = build_ingest(settings)
    engine = create_index_engine(settings)
    try:
        workers.start(2)
        study = store_study(ingest, slices=3)
        job = wait_for(
            lambda: next((j for j in jobs_of(engine, study) if j.status == "running"), None),
            30,
            "the job to start",
        )
        victim = int(job.lease_owner.split(":")[1])
        os.kill(victim, signal.SIGKILL)
        done = wait_for(
            lambda: next((j for j in jobs_of(engine, study) if j.status == "succeeded"), None),
            30,
            "another worker to finish the job",
        )
    finally:
        workers.stop()
        ingest.engine.dispose()
    assert done.attempts == 2 and int(done.result["summary"]["instances"]) == 3
    with engine.connect() as conn:
        reports = conn.scalar(
            select(func.count())
            .select_from(Instance)
            .join(Series)
            .join(Study)
            .where(Study.study_instance_uid == study, Series.modality == "SR")
        )
    assert reports == 1
    kinds = [e.kind for e in events(engine, study=study) if e.kind.startswith("job.")]
    assert kinds == ["job.queued", "job.started", "job.failed", "job.started", "job.succeeded"]
    assert "lease expired" in events(engine, "job.failed", study)[0].payload["error"]
    engine.dispose()


def test_pacs_serve_on_sqlite_runs_the_whole_path(tmp_path: Path, request: Any) -> None:
    backend = make_backend(request, tmp_path, "sqlite", "file")
    rules = rules_file(tmp_path)
    archive = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_RULES_FILE=str(rules),
        PACS_STABLE_AFTER_SECONDS="1",
        PACS_SCP_PROCESSES="1",
    )
    try:
        ingest = build_ingest(backend.with_settings(stable_after_seconds=1))
        study = store_study(ingest, slices=3)
        last_stored = time.time()
        jobs = wait_for(
            lambda: httpx.get(
                f"{archive.http}/api/jobs", params={"study": study, "status": "succeeded"}
            ).json()["jobs"],
            30,
            "the job to succeed",
        )
        metrics = httpx.get(f"{archive.http}/metrics").text
    finally:
        stop_archive(archive)
    (job,) = jobs
    started = (
        time.mktime(time.strptime(job["started_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    )
    assert started - last_stored < 1 + 1.5  # quiet period + sweep + poll (+ clock granularity)
    assert job["result"]["summary"]["instances"] == 3
    assert 'pacs_jobs_finished_total{analysis="test",status="succeeded"}' in metrics
    assert "pacs_jobs_oldest_ready_seconds" in metrics
