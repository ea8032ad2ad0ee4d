"""Audit trail benchmark: the cost of an audit record, and of sealing records into the chain.

Run from the repository root::

    .venv/bin/python -m bench.audit              # SQLite + PostgreSQL, updates docs
    .venv/bin/python -m bench.audit --no-write   # print only

Writes ``--records`` audit records with 1 and ``--writers`` concurrent writers (threads, each
with its own engine, as separate processes would be) through ``pacs.audit.record`` (an
unsealed row) while a sealer thread (own engine) runs ``pacs.audit.seal_on`` every
``--seal-interval`` seconds, as the background loop does, and, as the baseline, the same rows
as a bare INSERT in a transaction of their own. Reports the writers' records/s, the median
and p95 latency of one record and the sealer's rate (rows sealed per second spent sealing);
the chain is verified (every record sealed) after each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session

from bench.host import cpu_model, git_version, loadavg, ram_gib
from bench.report import write_section
from bench.targets import DEFAULT_POSTGRES_URL
from pacs.audit import Access, Protocol, record, seal_on, verify
from pacs.audit.chain import row_values
from pacs.audit.tables import AuditEvent
from pacs.config import Settings
from pacs.index.engine import WRITE, create_index_engine, writer_turn
from pacs.index.migrate import upgrade

BEGIN = "<!-- bench/audit.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/audit.py: end -->"


def _access(i: int) -> Access:
    return Access(
        "dr.ivanova",
        "read",
        f"/dicomweb/studies/1.2.{i}",
        client_address="10.0.0.7",
        protocol=Protocol.DICOMWEB,
        patient=f"P{i}",
        study=f"1.2.{i}",
        organisation="org-a",
    )


def recorded(engine: Engine, i: int) -> None:
    with Session(engine) as session:
        record(session, _access(i))


def plain(engine: Engine, i: int) -> None:
    with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
        conn.execute(insert(AuditEvent).values(**row_values(_access(i))))


class Sealer:
    """The background sealer: ``seal_on`` every ``interval`` seconds on its own engine."""

    def __init__(self, settings: Settings, interval: float) -> None:
        self.engine = create_index_engine(settings)
        self.interval = interval
        self.sealed = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.seal()

    def seal(self) -> None:
        started = time.perf_counter()
        self.sealed += seal_on(self.engine)
        self.seconds += time.perf_counter() - started

    def __enter__(self) -> Sealer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seal()  # what the writers left since the last round
        self.engine.dispose()


def run(
    settings: Settings, write: Callable[[Engine, int], None], records: int, writers: int
) -> tuple[float, list[float]]:
    """(records/s, latencies in ms)."""
    engines = [create_index_engine(settings) for _ in range(writers)]
    latencies: list[float] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        mine = []
        for i in range(n, records, writers):
            started = time.perf_counter()
            write(engines[n], i)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for engine in engines:
        engine.dispose()
    return records / elapsed, latencies


def database(kind: str, root: Path) -> tuple[Settings, Callable[[], None]]:
    """Fresh settings of ``kind`` and a clean-up."""
    if kind == "sqlite":
        return Settings(data_dir=root / uuid.uuid4().hex), lambda: None
    name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        os.environ.get("PACS_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return Settings(data_dir=root / name, database_url=url), drop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=400)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--seal-interval", type=float, default=1.0)
    p.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    p.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = p.parse_args(argv)
    load_before = loadavg()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.databases:
            for writers in (1, args.writers):
                for label, write in (("bare INSERT", plain), ("record + sealer", recorded)):
                    settings, drop = database(kind, Path(tmp))
                    engine = create_index_engine(settings)
                    upgrade(engine)
                    sealing = "-"
                    try:
                        if write is recorded:
                            with Sealer(settings, args.seal_interval) as sealer:
                                rate, ms = run(settings, write, args.records, writers)
                            assert sealer.sealed == args.records, sealer.sealed
                            sealing = f"{sealer.sealed / sealer.seconds:.0f}"
                            with engine.connect() as conn:
                                assert verify(conn).checked == args.records
                        else:
                            rate, ms = run(settings, write, args.records, writers)
                    finally:
                        engine.dispose()
                        drop()
                    p95 = statistics.quantiles(ms, n=20)[18]
                    lines.append(
                        f"| {kind} | {writers} | {label} | {rate:.0f} | "
                        f"{statistics.median(ms):.2f} | {p95:.2f} | {sealing} |"
                    )
                    print(lines[-1], flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            BEGIN,
            "## Audit trail (`bench/audit.py`)",
            "",
            f"Measured {stamp} with `python -m bench.audit`: {args.records} audit records per "
            "cell, each in a transaction of its own, by 1 and by "
            f"{args.writers} concurrent writers (own engine each). *bare INSERT* is the row "
            "alone; *record + sealer* is `pacs.audit.record` (an unsealed row, no lock) "
            "while a sealer thread with its own engine runs `pacs.audit.seal_on` every "
            f"{args.seal_interval:g} s, as the background loop does (`PACS_AUDIT_SEAL_INTERVAL`)"
            "; *sealed/s* is rows sealed per second the sealer spent sealing. Every record was "
            "sealed and the chain verified intact afterwards. Before the records were sealed in "
            "batches, each record locked and advanced the chain head in its own transaction "
            "(measured 2026-12-03 11:36 UTC, `e86f11d`, load ~10): PostgreSQL 4 "
            "writers 29 records/s (median 113 ms) against 113 for the bare INSERT, SQLite 4 "
            "writers 44 against 72.",
            "",
            "| database | writers | write | records/s | median ms | p95 ms | sealed/s |",
            "|---|---|---|---|---|---|---|",
            *lines,
            "",
            f"Machine: {cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM; load "
            f"average {load_before} before, {loadavg()} after (shared with other work). "
            f"Archive at `{git_version()}`.",
            END,
        ]
    )
    if not args.no_write:
        write_section(BEGIN, END, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
