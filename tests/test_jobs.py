"""The job queue in one process: run, retry with backoff, dead letter, cancel, lease expiry,
idempotent outputs; the HTTP API and the CLI of jobs, rules and the change feed."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from pacs.cli import app as cli
from pacs.config import Settings, parse_limits
from pacs.index.engine import WRITE, create_index_engine
from pacs.index.models import Instance, Series
from pacs.ingest import IngestService
from pacs.jobs import queue
from pacs.jobs.registry import ANALYSES
from pacs.jobs.rules import parse_rules
from pacs.jobs.sweeper import study_state, sweep
from pacs.jobs.worker import Worker
from pacs.runtime import build_ingest
from tests.conftest import Backend
from tests.jobs_helpers import TEST_RULES, events, jobs_of, rules_file, store_study, wait_for
from viewer_api.app import create_app

RULES = parse_rules(TEST_RULES)


class Env:
    """Settings, ingest, engine and a worker of one test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ingest: IngestService = build_ingest(settings)
        self.engine: Engine = create_index_engine(settings)
        self.worker = Worker(settings, self.engine, self.ingest)
        self.versions = itertools.count(1)

    def stable_study(self, slices: int = 2) -> str:
        study = store_study(self.ingest, slices=slices)
        time.sleep(self.settings.stable_after_seconds + 0.05)
        assert sweep(self.engine, RULES, self.settings.job_max_attempts)
        return study

    def enqueue(self, analysis: str = "noop", **options: Any) -> int:
        with queue.write(self.engine) as conn:
            pk = queue.enqueue(
                conn,
                analysis=analysis,
                study_instance_uid="1.2.3",
                study_version=next(self.versions),
                series_instance_uids=[],
                options=options,
                max_attempts=self.settings.job_max_attempts,
            )
        assert pk is not None
        return pk

    def run_next(self) -> str:
        job = queue.claim(self.engine, self.worker.owner, self.settings.job_lease_seconds)
        assert job is not None
        return self.worker.run(job)


@pytest.fixture
def env(db_backend: Backend) -> Iterator[Env]:
    settings = db_backend.with_settings(
        stable_after_seconds=0.2,
        job_max_attempts=2,
        job_retry_base_seconds=1.0,
        job_lease_seconds=5.0,
        webhook_allowed_networks="127.0.0.0/8",  # the test receivers run on this machine
    )
    env = Env(settings)
    yield env
    env.engine.dispose()
    env.ingest.engine.dispose()


def sr_instances(engine: Engine, study: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(Instance)
                .join(Series)
                .where(Series.modality == "SR")
            )
            or 0
        )


def test_test_analysis_stores_its_report_once_even_when_re_run(env: Env) -> None:
    study = env.stable_study()
    assert env.run_next() == "succeeded"
    (job,) = jobs_of(env.engine, study)
    assert job.status == "succeeded" and job.attempts == 1 and job.lease_owner is None
    (output,) = job.result["output_sop_instance_uids"]
    assert job.result["summary"]["instances"] == 2
    assert sr_instances(env.engine, study) == 1
    kinds = [e.kind for e in events(env.engine, study=study)]
    assert kinds[-4:] == ["job.started", "series.added", "instance.stored", "job.succeeded"]
    # the report did not re-open the study
    assert study_state(env.engine, study)["version"] == 1  # type: ignore[index]
    queue.retry(env.engine, job.pk)  # the operator re-runs it
    assert env.run_next() == "succeeded"
    (again,) = jobs_of(env.engine, study)
    assert again.result["output_sop_instance_uids"] == [output]
    assert again.result["summary"]["stored"] == "duplicate"
    assert sr_instances(env.engine, study) == 1


def test_failures_back_off_then_dead_letter_with_the_error(env: Env) -> None:
    pk = env.enqueue(fail="boom")
    assert env.run_next() == "failed"
    job = queue.get_job(env.engine, pk)
    assert job["status"] == "failed" and "boom" in job["error"] and job["attempts"] == 1
    assert queue.claim(env.engine, "other", 5.0) is None  # backing off
    time.sleep(1.05)
    assert env.run_next() == "dead"  # attempt 2 of 2
    job = queue.get_job(env.engine, pk)
    assert job["status"] == "dead" and "boom" in job["error"] and job["attempts"] == 2
    failed = [e.payload for e in events(env.engine, "job.failed")]
    assert [p["status"] for p in failed] == ["failed", "dead"]
    assert queue.retry(env.engine, pk)["status"] == "queued"
    assert queue.get_job(env.engine, pk)["attempts"] == 0


def test_backoff_doubles_up_to_its_ceiling() -> None:
    backoff = queue.Backoff(base=10, ceiling=60)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [
        timedelta(seconds=s) for s in (10, 20, 40, 60, 60)
    ]


def test_unknown_analysis_fails_the_job_not_the_worker(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ANALYSES, "broken", "pacs.no_such_module:analyse")
    pk = env.enqueue("broken")
    assert env.run_next() == "dead"
    assert "cannot be loaded" in queue.get_job(env.engine, pk)["error"]
    env.enqueue("noop")
    assert env.run_next() == "succeeded"


def test_cancel_waiting_and_running_jobs(env: Env) -> None:
    waiting = env.enqueue()
    assert queue.cancel(env.engine, waiting)["status"] == "cancelled"
    with pytest.raises(queue.JobStateError):
        queue.cancel(env.engine, waiting)
    running = env.enqueue(sleep_seconds=30)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(env.run_next()))
    thread.start()
    wait_for(lambda: queue.get_job(env.engine, running)["status"] == "running", 10, "start")
    assert queue.cancel(env.engine, running)["cancel_requested"] is True
    thread.join(10)
    assert outcome == ["cancelled"]
    assert queue.get_job(env.engine, running)["status"] == "cancelled"
    assert [e.payload["job_id"] for e in events(env.engine, "job.cancelled")] == [
        waiting,
        running,
    ]


def test_expired_lease_is_reaped_and_the_old_owner_cannot_finish(env: Env) -> None:
    pk = env.enqueue()
    lost = queue.claim(env.engine, "dead-worker", lease_seconds=0.2)
    assert lost is not None and lost.pk == pk
    assert queue.reap(env.engine, queue.Backoff(0, 0)) == 0  # lease still valid
    time.sleep(0.3)
    assert queue.reap(env.engine, queue.Backoff(0, 0)) == 1
    job = queue.get_job(env.engine, pk)
    assert job["status"] == "failed" and "lease expired" in job["error"]
    taken = queue.claim(env.engine, "live-worker", lease_seconds=5)
    assert taken is not None and taken.pk == pk and taken.attempts == 2
    assert queue.complete(env.engine, lost, "dead-worker", {}) is False
    assert queue.complete(env.engine, taken, "live-worker", {}) is True


def test_per_analysis_limit_in_one_worker(env: Env) -> None:
    env.enqueue("noop", sleep_seconds=0.5)
    env.enqueue("noop", sleep_seconds=0.5)
    env.enqueue("test")
    worker = Worker(env.settings, env.engine, env.ingest, concurrency=3, limits={"noop": 1})
    worker._running[0] = queue.ClaimedJob(0, "noop", "", 1, [], {}, 1, 1)  # one noop runs
    with env.engine.connect().execution_options(**WRITE) as conn:
        assert worker._claim(conn) is not None  # the test job, not a second noop
        assert worker._claim(conn) is None
    assert parse_limits("ct-chest=1, test=4") == {"ct-chest": 1, "test": 4}
    with pytest.raises(ValueError, match="ANALYSIS=count"):
        parse_limits("ct-chest=0")


def test_http_api(env: Env, tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    settings = env.settings.model_copy(update={"rules_file": path})
    study = env.stable_study()
    with TestClient(create_app(settings)) as client:
        body = client.get("/api/jobs", params={"status": "queued"}).json()
        (job,) = body["jobs"]
        assert job["study_instance_uid"] == study and body["queue"]["by_status"]["queued"] == 1
        assert client.get("/api/jobs", params={"status": "bogus"}).status_code == 422
        assert client.get(f"/api/jobs/{job['id']}").json()["analysis"] == "test"
        assert client.get("/api/jobs/999999").status_code == 404
        assert client.post(f"/api/jobs/{job['id']}/retry").status_code == 409
        assert client.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409
        assert client.post(f"/api/jobs/{job['id']}/retry").json()["status"] == "queued"
        page = client.get("/api/changes", params={"since": 0, "limit": 2}).json()
        assert len(page["changes"]) == 2 and page["done"] is False
        rest = client.get("/api/changes", params={"since": page["last"], "limit": 1000}).json()
        seqs = [c["seq"] for c in page["changes"] + rest["changes"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and rest["done"] is True
        kinds = {c["kind"] for c in rest["changes"]}
        assert {"study.stable", "job.queued", "job.cancelled"} <= kinds
        only = client.get("/api/changes", params={"kind": "study.stable"}).json()["changes"]
        assert [c["study_instance_uid"] for c in only] == [study]
        assert client.get("/api/changes", params={"kind": "nope"}).status_code == 422
        assert client.get("/api/changes", params={"since": -1}).status_code == 422
        rules = client.get("/api/rules").json()
        assert rules["source"] == str(path) and rules["rules"][0]["analysis"] == "test"
        path.write_text("rules:\n  - name: x\n    analysis: test\n    priority: high\n")
        bad = client.post("/api/rules/reload")
        assert bad.status_code == 422 and bad.json()["line"] == 4
        assert "priority" in bad.json()["reason"]
        assert client.get("/api/rules").json()["rules"][0]["name"] == "any-ct"  # unchanged
        hook = client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x", "secret": "s"})
        assert hook.status_code == 201 and hook.json()["signed"] is True
        assert "secret" not in hook.json()
        assert client.post("/api/webhooks", json={"url": "ftp://x"}).status_code == 422
        assert (
            client.post("/api/webhooks", json={"url": "http://a/", "kinds": ["nope"]}).status_code
            == 422
        )
        assert [h["id"] for h in client.get("/api/webhooks").json()] == [hook.json()["id"]]
        assert client.get(f"/api/webhooks/{hook.json()['id']}/deliveries").json() == []
        assert client.delete(f"/api/webhooks/{hook.json()['id']}").status_code == 204
        assert client.delete(f"/api/webhooks/{hook.json()['id']}").status_code == 404


def test_cli(env: Env) -> None:
    pk = env.enqueue(fail="nope")
    env.run_next()
    runner = CliRunner()
    cli_env = {"PACS_DATA_DIR": str(env.settings.data_dir)}
    if env.engine.dialect.name == "postgresql":
        cli_env["PACS_DATABASE_URL"] = env.settings.resolved_database_url
    listed = runner.invoke(cli, ["jobs", "list", "--status", "failed"], env=cli_env)
    assert listed.exit_code == 0 and "noop" in listed.output
    shown = runner.invoke(cli, ["jobs", "show", str(pk)], env=cli_env)
    assert shown.exit_code == 0 and '"status": "failed"' in shown.output
    retried = runner.invoke(cli, ["jobs", "retry", str(pk)], env=cli_env)  # now, no backoff
    assert retried.exit_code == 0 and '"status": "queued"' in retried.output
    assert runner.invoke(cli, ["jobs", "retry", str(pk)], env=cli_env).exit_code == 3
    cancelled = runner.invoke(cli, ["jobs", "cancel", str(pk)], env=cli_env)
    assert cancelled.exit_code == 0 and '"status": "cancelled"' in cancelled.output
    assert runner.invoke(cli, ["jobs", "cancel", str(pk)], env=cli_env).exit_code == 3
    assert runner.invoke(cli, ["jobs", "show", "999999"], env=cli_env).exit_code == 1
    assert runner.invoke(cli, ["jobs", "list", "--status", "x"], env=cli_env).exit_code == 2
