"""FHIR search and transaction benchmark on PostgreSQL.

Loads N synthetic patients (default 100,000), each with an Encounter, an ImagingStudy, a
DiagnosticReport and 6 Observations (10 resources per patient: 1 M for 100,000), into a fresh
PostgreSQL database in bulk (the same index rows the store writes, sent with COPY), starts
``pacs serve`` on it and measures over HTTP:

* ``GET /fhir/DiagnosticReport?patient=<random>&_include=DiagnosticReport:result``
  (latency percentiles, target p95 < 100 ms);
* ``POST /fhir`` with a ``transaction`` Bundle of 50 entries (a patient, encounter, study,
  report and 46 observations linked by ``urn:uuid``; target p95 < 300 ms).

The figures go into docs/performance.md between this benchmark's markers (``--no-write``: not).

    .venv/bin/python -m bench.fhir --patients 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.report import write_section
from bench.targets import DEFAULT_POSTGRES_URL, serve_archive
from pacs.config import Settings
from pacs.fhir.indexer import extract
from pacs.fhir.values import parse_reference
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]

BEGIN = "<!-- bench/fhir.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/fhir.py: end -->"
SNILS = "urn:oid:1.2.643.100.3"
LOINC = "http://loinc.org"
MEASUREMENTS = [
    ("right-lung-volume", "mL"),
    ("left-lung-volume", "mL"),
    ("emphysema-index", "%"),
    ("ground-glass", "%"),
    ("consolidation", "%"),
    ("involvement", "%"),
]


# ---------------------------------------------------------------- synthetic resources


def patient_resources(n: int, stamp: str) -> list[dict[str, Any]]:
    """The 10 resources of patient number ``n`` (ids derived from ``n``)."""
    pid, eid, sid, rid = f"p{n}", f"e{n}", f"s{n}", f"r{n}"
    meta = {"versionId": "1", "lastUpdated": stamp}
    day = f"2024-{n % 12 + 1:02d}-{n % 28 + 1:02d}"
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "meta": meta,
        "identifier": [{"system": SNILS, "value": f"{n:011d}"}],
        "name": [{"family": f"Family{n % 5000}", "given": [f"Given{n % 300}"]}],
        "gender": "female" if n % 2 else "male",
        "birthDate": f"{1930 + n % 80}-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
    }
    encounter = {
        "resourceType": "Encounter",
        "id": eid,
        "meta": meta,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": f"{day}T09:00:00Z", "end": f"{day}T11:00:00Z"},
    }
    study = {
        "resourceType": "ImagingStudy",
        "id": sid,
        "meta": meta,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.10.{n}"}],
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"},
        "started": f"{day}T09:30:00Z",
        "numberOfSeries": 1,
        "numberOfInstances": 300,
        "series": [
            {
                "uid": f"1.2.826.0.1.3680043.10.{n}.1",
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
            }
        ],
    }
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{n}-{i}",
            "meta": meta,
            "status": "preliminary",
            "code": {"coding": [{"system": "urn:pacs:measurement", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{eid}"},
            "derivedFrom": [{"reference": f"ImagingStudy/{sid}"}],
            "effectiveDateTime": f"{day}T09:30:00Z",
            "valueQuantity": {"value": round(random.uniform(0, 100), 1), "unit": unit},
        }
        for i, (code, unit) in enumerate(MEASUREMENTS)
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "meta": meta,
        "status": "preliminary",
        "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"},
        "effectiveDateTime": f"{day}T09:30:00Z",
        "imagingStudy": [{"reference": f"ImagingStudy/{sid}"}],
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
    }
    return [patient, encounter, study, report, *observations]


def transaction_bundle(n_observations: int = 46) -> dict[str, Any]:
    """A transaction of 4 + ``n_observations`` entries linked by ``urn:uuid`` fullUrls."""
    u = {k: f"urn:uuid:{uuid.uuid4()}" for k in ("p", "e", "s", "r")}
    snils = f"{random.randrange(10**11):011d}"
    resources: list[tuple[str, dict[str, Any]]] = [
        (
            u["p"],
            {
                "resourceType": "Patient",
                "identifier": [{"system": SNILS, "value": snils}],
                "name": [{"family": "Transaction", "given": ["Bench"]}],
            },
        ),
        (
            u["e"],
            {
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {"code": "AMB"},
                "subject": {"reference": u["p"]},
            },
        ),
        (
            u["s"],
            {
                "resourceType": "ImagingStudy",
                "status": "available",
                "subject": {"reference": u["p"]},
                "encounter": {"reference": u["e"]},
            },
        ),
    ]
    obs = []
    for i in range(n_observations):
        ref = f"urn:uuid:{uuid.uuid4()}"
        obs.append(ref)
        resources.append(
            (
                ref,
                {
                    "resourceType": "Observation",
                    "status": "preliminary",
                    "code": {"coding": [{"system": "urn:pacs:measurement", "code": f"m{i}"}]},
                    "subject": {"reference": u["p"]},
                    "derivedFrom": [{"reference": u["s"]}],
                    "valueQuantity": {"value": i, "unit": "%"},
                },
            )
        )
    resources.append(
        (
            u["r"],
            {
                "resourceType": "DiagnosticReport",
                "status": "preliminary",
                "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
                "subject": {"reference": u["p"]},
                "imagingStudy": [{"reference": u["s"]}],
                "result": [{"reference": r} for r in obs],
            },
        )
    )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for full_url, resource in resources
        ],
    }


# ---------------------------------------------------------------- bulk load


def _copy(cursor: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def bulk_load(url: str, patients: int, chunk: int = 2000) -> float:
    """Load ``patients`` x 10 resources with COPY; seconds taken."""
    engine = create_engine(url)
    stamp = datetime.now(UTC)
    instant = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    started = time.perf_counter()
    pk = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET synchronous_commit = off")
        for first in range(0, patients, chunk):
            res, hist, tok, ref, dat, strs = [], [], [], [], [], []
            for n in range(first, min(first + chunk, patients)):
                for resource in patient_resources(n, instant):
                    pk += 1
                    rtype, rid = resource["resourceType"], resource["id"]
                    content = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
                    res.append((pk, rtype, rid, 1, stamp, False, content))
                    hist.append((rtype, rid, 1, stamp, False, "POST", content))
                    rows = extract(resource, parse_reference)
                    tok += [(pk, rtype, p, s, c) for p, s, c in set(rows.tokens)]
                    ref += [(pk, rtype, p, t, i) for p, t, i in set(rows.references)]
                    dat += [(pk, rtype, p, lo, hi) for p, lo, hi in set(rows.dates)]
                    strs += [(pk, rtype, p, v, x) for p, v, x in set(rows.strings)]
            _copy(
                cursor,
                "fhir_resource",
                ("pk", "resource_type", "id", "version_id", "last_updated", "deleted", "content"),
                res,
            )
            _copy(
                cursor,
                "fhir_resource_history",
                (
                    "resource_type",
                    "id",
                    "version_id",
                    "last_updated",
                    "deleted",
                    "method",
                    "content",
                ),
                hist,
            )
            _copy(
                cursor,
                "fhir_token",
                ("resource_pk", "resource_type", "param", "system", "code"),
                tok,
            )
            _copy(
                cursor,
                "fhir_reference",
                ("resource_pk", "resource_type", "param", "target_type", "target_id"),
                ref,
            )
            _copy(
                cursor, "fhir_date", ("resource_pk", "resource_type", "param", "low", "high"), dat
            )
            _copy(
                cursor,
                "fhir_string",
                ("resource_pk", "resource_type", "param", "value", "exact"),
                strs,
            )
            raw.commit()
            done = min(first + chunk, patients)
            rate = pk / (time.perf_counter() - started)
            print(
                f"\r  loaded {done}/{patients} patients ({pk} resources, {rate:,.0f}/s)",
                end="",
                flush=True,
            )
        print()
        cursor.execute("SELECT setval(pg_get_serial_sequence('fhir_resource', 'pk'), %s)", (pk,))
        raw.commit()
        raw.driver_connection.autocommit = True
        raw.driver_connection.execute("VACUUM ANALYZE")
    finally:
        raw.close()
        engine.dispose()
    return time.perf_counter() - started


# ---------------------------------------------------------------- measuring


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": ordered[-1]}


def _serve(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    settings = {"PACS_DATABASE_URL": url, "PACS_SERVE_WORKER": "false", "PACS_EMR_FEED": "false"}
    process, base, _ = serve_archive(data_dir, settings)
    return process, f"{base}/fhir"


def cpu_ms(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` used so far, in ms."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1000 / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the API process and by the PostgreSQL backends of the database."""

    def __init__(self, api_pid: int, admin: Any, database: str) -> None:
        self.api_pid, self.admin, self.database = api_pid, admin, database

    def read(self) -> tuple[float, float]:
        with self.admin.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": self.database}
            ).scalars()
            backends = list(pids)
        return cpu_ms([self.api_pid]), cpu_ms(backends)


def measure_search(client: httpx.Client, patients: int, queries: int) -> list[float]:
    samples = []
    for _ in range(queries):
        n = random.randrange(patients)
        started = time.perf_counter()
        response = client.get(
            "/DiagnosticReport",
            params={"patient": f"p{n}", "_include": "DiagnosticReport:result"},
        )
        samples.append((time.perf_counter() - started) * 1000)
        bundle = response.json()
        if response.status_code != 200 or len(bundle.get("entry", [])) != 1 + len(MEASUREMENTS):
            raise RuntimeError(f"unexpected answer for p{n}: {response.status_code}")
    return samples


def measure_transactions(client: httpx.Client, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        bundle = transaction_bundle()
        started = time.perf_counter()
        response = client.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or len(response.json()["entry"]) != 50:
            raise RuntimeError(f"transaction failed: {response.status_code} {response.text[:300]}")
    return samples


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {system}"


def _row(what: str, runs: int, p: dict[str, float], target: int) -> str:
    met = "yes" if p["p95"] < target else "**no**"
    figures = " | ".join(f"{p[k]:.1f}" for k in ("p50", "p95", "p99", "max", "api_cpu", "pg_cpu"))
    return f"| {what} | {runs} | {figures} | {target} | {met} |"


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    return "\n".join(
        [
            BEGIN,
            f"Measured {results['date']} on {results['machine']}; PostgreSQL {results['pg']}"
            f" on the same machine; load average at start {results['load']}.",
            "",
            f"Data: {args.patients:,} patients x 10 resources = {results['resources']:,} resources"
            f" (bulk load with COPY: {results['load_s']:.0f} s; {results['db_size']} on disk).",
            "",
            "| request | runs | p50 ms | p95 ms | p99 ms | max ms | API CPU ms/request"
            " | PostgreSQL CPU ms/request | target p95 ms | met |",
            "|---|---|---|---|---|---|---|---|---|---|",
            _row(
                "`DiagnosticReport?patient=…&_include=DiagnosticReport:result` (7 resources)",
                args.queries,
                results["search"],
                100,
            ),
            _row(
                "`POST /fhir` transaction of 50 entries (`urn:uuid` references)",
                args.transactions,
                results["transaction"],
                300,
            ),
            "",
            "One client, sequential requests over HTTP keep-alive to `pacs serve` (one API"
            " process). CPU columns: CPU time of the API process and of the database's"
            " PostgreSQL backends during the runs, divided by the runs (what a request costs,"
            " whatever the load).",
            END,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--patients", type=int, default=100_000, help="patients (10 resources each)")
    p.add_argument("--queries", type=int, default=300, help="search requests measured")
    p.add_argument("--transactions", type=int, default=40, help="transactions measured")
    p.add_argument(
        "--postgres", default=os.environ.get("PACS_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    p.add_argument("--keep", action="store_true", help="keep the database (prints its URL)")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(1)
    admin_url = make_url(args.postgres)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pacs_bench_fhir_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        pg = conn.execute(text("SHOW server_version")).scalar()
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    process = None
    try:
        engine = create_index_engine(Settings(database_url=url))
        upgrade(engine)
        engine.dispose()
        load = os.getloadavg()[0]
        print(f"loading {args.patients:,} patients into {name}")
        load_s = bulk_load(url, args.patients)
        with admin.connect() as conn:
            size = conn.execute(text(f"SELECT pg_size_pretty(pg_database_size('{name}'))")).scalar()
        with tempfile.TemporaryDirectory() as tmp:
            process, base = _serve(url, Path(tmp))
            meter = CpuMeter(process.pid, admin, name)
            with httpx.Client(base_url=base, timeout=60) as client:
                measure_search(client, args.patients, 20)  # warm-up
                before = meter.read()
                search = measure_search(client, args.patients, args.queries)
                after = meter.read()
                search_cpu = [(a - b) / args.queries for a, b in zip(after, before, strict=True)]
                measure_transactions(client, 3)
                before = meter.read()
                transaction = measure_transactions(client, args.transactions)
                after = meter.read()
                tx_cpu = [(a - b) / args.transactions for a, b in zip(after, before, strict=True)]
            process.terminate()
            process.wait(timeout=30)
            process = None
        results = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "pg": pg,
            "load": f"{load:.1f}",
            "resources": args.patients * 10,
            "load_s": load_s,
            "db_size": size,
            "search": {
                **_percentiles(search),
                "api_cpu": search_cpu[0],
                "pg_cpu": search_cpu[1],
            },
            "transaction": {
                **_percentiles(transaction),
                "api_cpu": tx_cpu[0],
                "pg_cpu": tx_cpu[1],
            },
        }
        section = report(args, results)
        print(section)
        if not args.no_write:
            write_section(BEGIN, END, section)
    finally:
        if process is not None:
            process.kill()
        if args.keep:
            print(f"kept: {url}")
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
