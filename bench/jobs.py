"""Benchmark of the study lifecycle and the job queue (issue 4).

1. Latency: time from the last instance of a study to its job starting, with a quiet period of
   ``--quiet`` seconds, against ``pacs worker`` processes (which run the sweeper) on SQLite
   (1 worker) and on PostgreSQL (2 workers). Target: quiet period + < 1 s.
2. Throughput: no-op jobs claimed and completed by 4 ``pacs worker`` processes (one slot each)
   on PostgreSQL, from the first start to the last finish. Target: >= 200 jobs/s.
3. Ingest with the lifecycle on (study state at ingest, a worker process running the sweeper
   against the same database) against off (``PACS_STUDY_LIFECYCLE=false``: the change feed's
   ``instance.stored`` / ``series.added`` only, nothing else running): instances/s through the
   ingest service (4 threads, default fsync policy), off and on runs interleaved. Target: on
   within 10 % of off.

    .venv/bin/python -m bench.jobs                 # everything, writes docs/performance.md
    .venv/bin/python -m bench.jobs --quick --no-write

PostgreSQL at ``PACS_BENCH_POSTGRES_URL`` (default postgres@127.0.0.1:5432); each part uses
fresh databases and data directories under a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.host import cpu_model, git_version, loadavg, ram_gib
from bench.report import write_section
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.index.models import as_utc
from pacs.ingest import Source
from pacs.jobs import queue
from pacs.jobs.models import Job
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice

ROOT = Path(__file__).resolve().parents[1]

BEGIN = "<!-- bench/jobs.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/jobs.py: end -->"
POSTGRES = os.environ.get(
    "PACS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
NOOP_RULES = "rules:\n  - name: every-ct\n    analysis: noop\n    when: {modality: [CT]}\n"
MODALITY = Source(channel="dimse", ae_title="BENCH", host="127.0.0.1")


# ---------------------------------------------------------------- environments


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Environment variables of a fresh, migrated index (SQLite file or PostgreSQL database)."""
    env = {
        "PACS_DATA_DIR": str(workdir / f"var-{uuid.uuid4().hex[:6]}"),
        "PACS_LOG_LEVEL": "WARNING",
    }
    drop = None
    if kind == "postgresql":
        name = f"pacs_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(make_url(POSTGRES), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        env["PACS_DATABASE_URL"] = (
            make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
        )

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    engine = create_index_engine(settings_of(env))
    upgrade(engine)
    engine.dispose()
    try:
        yield env
    finally:
        if drop is not None:
            drop()


def settings_of(env: dict[str, str], **overrides: Any) -> Settings:
    values = {k.removeprefix("PACS_").lower(): v for k, v in env.items()}
    return Settings(**{**values, **overrides})


@contextmanager
def workers(n: int, env: dict[str, str], workdir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` ``pacs worker`` processes, started and ready."""
    procs = []
    logs = []
    for i in range(n):
        log = workdir / f"worker-{uuid.uuid4().hex[:6]}-{i}.log"
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "worker"],
                env={**os.environ, **env, "PACS_LOG_LEVEL": "INFO"},
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        )
    deadline = time.monotonic() + 120
    while not all(b"worker " in log.read_bytes() for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("workers did not start:\n" + "\n".join(f.read_text() for f in logs))
        time.sleep(0.1)
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def part10(study: str, series: str, index: int, size: int) -> bytes:
    buffer = io.BytesIO()
    ct_slice(study, series, index, size=size).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- 1. latency


def latency(kind: str, n_workers: int, studies: int, quiet: float, workdir: Path) -> list[float]:
    """Seconds from each study's last instance to its job starting, minus the quiet period."""
    rules = workdir / "noop-rules.yaml"
    rules.write_text(NOOP_RULES)
    with database(kind, workdir) as env:
        env = {**env, "PACS_RULES_FILE": str(rules), "PACS_STABLE_AFTER_SECONDS": str(quiet)}
        settings = settings_of(env)
        ingest = build_ingest(settings)
        engine = create_index_engine(settings)
        delays = []
        with workers(n_workers, env, workdir):
            for _ in range(studies):
                study, series = generate_uid(), generate_uid()
                for i in range(5):
                    assert ingest.store_part10(part10(study, series, i, 64), MODALITY).status.ok
                last = datetime.now(UTC)
                deadline = time.monotonic() + quiet + 30
                started = None
                while started is None and time.monotonic() < deadline:
                    with engine.connect() as conn:
                        started = conn.scalar(
                            select(Job.started_at).where(Job.study_instance_uid == study)
                        )
                    time.sleep(0.02)
                if started is None:
                    raise RuntimeError(f"no job started for study {study}")
                delays.append((as_utc(started) - last).total_seconds() - quiet)
        engine.dispose()
        ingest.engine.dispose()
    return delays


# ---------------------------------------------------------------- 2. throughput


def throughput(n_workers: int, jobs: int, workdir: Path) -> float:
    """No-op jobs per second through ``n_workers`` worker processes on PostgreSQL."""
    with database("postgresql", workdir) as env:
        env = {**env, "PACS_WORKER_POLL_SECONDS": "0.01"}
        engine = create_index_engine(settings_of(env))
        with queue.write(engine) as conn:
            for version in range(jobs):
                queue.enqueue(
                    conn,
                    analysis="noop",
                    study_instance_uid="1.2.3",
                    study_version=version,
                    series_instance_uids=[],
                )
        with workers(n_workers, env, workdir):
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    done = conn.scalar(
                        select(func.count()).select_from(Job).where(Job.status == "succeeded")
                    )
                if done == jobs:
                    break
                time.sleep(0.2)
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(Job.started_at), func.max(Job.finished_at))
            ).one()
        engine.dispose()
    if first is None or last is None:
        raise RuntimeError("no job ran")
    return jobs / (as_utc(last) - as_utc(first)).total_seconds()


# ---------------------------------------------------------------- 3. ingest on/off


def ingest_rate(kind: str, lifecycle: bool, studies: int, slices: int, workdir: Path) -> float:
    """Instances/s of 4 ingest threads; with the lifecycle on, a worker runs the sweeper."""
    rules = workdir / "noop-rules.yaml"
    rules.write_text(NOOP_RULES)
    with database(kind, workdir) as env:
        env = {
            **env,
            "PACS_STUDY_LIFECYCLE": str(lifecycle).lower(),
            "PACS_STABLE_AFTER_SECONDS": "1",
            "PACS_RULES_FILE": str(rules),
        }
        settings = settings_of(env)
        ingest = build_ingest(settings)
        data = [
            [part10(study, series, i, 256) for i in range(slices)]
            for study, series in ((generate_uid(), generate_uid()) for _ in range(studies))
        ]
        groups = [data[i::4] for i in range(4)]

        def send(group: list[list[bytes]]) -> None:
            for study in group:
                for blob in study:
                    assert ingest.store_part10(blob, MODALITY).status.ok

        with workers(1 if lifecycle else 0, env, workdir):
            started = time.perf_counter()
            threads = [threading.Thread(target=send, args=(g,)) for g in groups]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
        ingest.engine.dispose()
    return studies * slices / elapsed


# ---------------------------------------------------------------- 4. cost of the hook


def hook_cost(kind: str, instances: int, workdir: Path) -> tuple[float, float, float, float]:
    """CPU and wall ms per instance of ingest, and of the lifecycle hook inside it (one
    thread, 256x256 slices): a direct measure of the hook's share, immune to other load."""
    from pacs.jobs import lifecycle

    original = lifecycle.StudyLifecycle.on_instance
    spent = [0.0, 0.0]

    def timed(self: Any, *args: Any) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        original(self, *args)
        spent[0] += time.perf_counter() - wall
        spent[1] += time.thread_time() - cpu

    with database(kind, workdir) as env:
        blobs = []
        for _ in range(max(1, instances // 50)):
            study, series = generate_uid(), generate_uid()
            blobs += [part10(study, series, i, 256) for i in range(50)]
        # before build_ingest: it subscribes the (then timed) method to ingest's events
        lifecycle.StudyLifecycle.on_instance = timed  # type: ignore[method-assign,assignment]
        try:
            ingest = build_ingest(settings_of(env))
            wall, cpu = time.perf_counter(), time.thread_time()
            for blob in blobs:
                assert ingest.store_part10(blob, MODALITY).status.ok
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        finally:
            lifecycle.StudyLifecycle.on_instance = original  # type: ignore[method-assign]
        ingest.engine.dispose()
    n = len(blobs) / 1000
    return wall / n, cpu / n, spent[0] / n, spent[1] / n


# ---------------------------------------------------------------- report


def machine() -> str:
    engine = create_engine(POSTGRES)
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM, "
        f"Linux {platform.release()}; "
        f"Python {platform.python_version()}, PostgreSQL {pg}"
    )


def main(argv: list[str] | None = None) -> int:
    os.environ["PACS_TEST_ANALYSES"] = "1"  # the noop analysis, here and in the servers started
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, 1 run")
    p.add_argument("--quiet", type=float, default=2.0, help="quiet period of the latency part")
    p.add_argument("--runs", type=int, default=3, help="ingest on/off runs per backend")
    p.add_argument("--no-write", action="store_true", help="leave docs/performance.md alone")
    p.add_argument("--parts", nargs="+", default=["latency", "throughput", "ingest", "hook"])
    args = p.parse_args(argv)
    studies, jobs, runs = (3, 300, 1) if args.quick else (10, 2000, args.runs)
    ingest_studies, slices = (4, 20) if args.quick else (8, 50)
    before = loadavg()
    started = datetime.now(UTC)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        workdir = Path(tmp)
        if "latency" in args.parts:
            lines.append(
                f"Latency, last instance -> job started, minus the {args.quiet:g} s quiet "
                f"period ({studies} studies of 5 instances each, one after another):\n"
            )
            lines.append("| index | workers | median (s) | max (s) | target |")
            lines.append("|---|---|---|---|---|")
            for kind, n in (("sqlite", 1), ("postgresql", 2)):
                d = latency(kind, n, studies, args.quiet, workdir)
                verdict = "met" if max(d) < 1 else "MISSED"
                median = statistics.median(d)
                lines.append(f"| {kind} | {n} | {median:.2f} | {max(d):.2f} | < 1 s: {verdict} |")
                print(lines[-1], flush=True)
            lines.append("")
        if "throughput" in args.parts:
            rate = throughput(4, jobs, workdir)
            verdict = "met" if rate >= 200 else "MISSED"
            lines.append(
                f"Throughput: {jobs} no-op jobs claimed and completed by 4 `pacs worker` "
                f"processes (1 slot each) on PostgreSQL: **{rate:.0f} jobs/s** "
                f"(target >= 200: {verdict}).\n"
            )
            print(lines[-1], flush=True)
        if "ingest" in args.parts:
            lines.append(
                f"Ingest, {ingest_studies} studies x {slices} CT slices of 256x256 "
                f"(128 KiB) through the ingest service from 4 threads, default fsync "
                f"policy; lifecycle on = study state + change feed at ingest and a "
                f"`pacs worker` running the sweeper; {runs} interleaved run(s) each:\n"
            )
            lines.append("| index | off: inst/s (runs) | on: inst/s (runs) | on / off | target |")
            lines.append("|---|---|---|---|---|")
            for kind in ("sqlite", "postgresql"):
                off: list[float] = []
                on: list[float] = []
                for _ in range(runs):
                    off.append(ingest_rate(kind, False, ingest_studies, slices, workdir))
                    on.append(ingest_rate(kind, True, ingest_studies, slices, workdir))
                ratio = statistics.median(on) / statistics.median(off)
                verdict = "met" if ratio >= 0.9 else "MISSED"
                off_runs = ", ".join(f"{r:.0f}" for r in off)
                on_runs = ", ".join(f"{r:.0f}" for r in on)
                lines.append(
                    f"| {kind} | {statistics.median(off):.0f} ({off_runs}) "
                    f"| {statistics.median(on):.0f} ({on_runs}) | {ratio:.2f} "
                    f"| >= 0.90: {verdict} |"
                )
                print(lines[-1], flush=True)
            lines.append("")
        if "hook" in args.parts:
            lines.append(
                "Cost of the lifecycle hook inside ingest (study state + change events, in the "
                "index transaction), one thread, 256x256 CT slices, ms per instance:\n"
            )
            lines.append(
                "| index | ingest wall | ingest CPU | hook wall | hook CPU | hook share of CPU |"
            )
            lines.append("|---|---|---|---|---|---|")
            for kind in ("sqlite", "postgresql"):
                wall, cpu, hook_wall, hook_cpu = hook_cost(
                    kind, 100 if args.quick else 400, workdir
                )
                lines.append(
                    f"| {kind} | {wall:.2f} | {cpu:.2f} | {hook_wall:.3f} | {hook_cpu:.3f} "
                    f"| {hook_cpu / cpu:.1%} |"
                )
                print(lines[-1], flush=True)
            lines.append("")
    section = "\n".join(
        [
            BEGIN,
            "## Study lifecycle and jobs (`bench/jobs.py`)",
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC with `python -m bench.jobs"
            f"{' --quick' if args.quick else ''}` on {machine()}; archive at `{git_version()}`. "
            f"Load average {before} before, {loadavg()} after (the machine is shared).",
            "",
            *lines,
            END,
        ]
    )
    print(section)
    if not args.no_write and not args.quick:
        write_section(BEGIN, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
