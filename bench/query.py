"""Query benchmark: study-level QIDO-RS and C-FIND latency on a large index, against Orthanc.

Run from the repository root::

    .venv/bin/python -m bench.query --studies 2000 --orthanc-studies 500     # quick, ~2 min
    .venv/bin/python -m bench.query --studies 100000 --backends postgresql    # the target

Indexes ``--studies`` synthetic studies (5 series of 2 instances each; headers only) by inserting
rows straight into the index tables (not through C-STORE), starts ``pacs serve`` on that index
and measures p50/p95 latency of four study-level queries, each over QIDO-RS (``GET
/dicomweb/studies``, ``limit=100``, one keep-alive HTTP connection) and C-FIND (Study Root, one
association for all queries): PatientID exact, PatientName prefix wildcard, StudyDate range +
ModalitiesInStudy, AccessionNumber exact. Every query value is drawn from the indexed data, so
every query matches. Orthanc (Debian's, no DICOMweb plugin) is loaded over REST with the first
``--orthanc-studies`` studies (one instance each: study-level queries only need one) and
measured with C-FIND and ``/tools/find``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine, make_url

from bench.report import write_section
from bench.targets import serve_archive
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.index.models import Instance, Patient, Series, Study
from testkit.net import free_port
from testkit.orthanc import running_orthanc

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN = os.environ.get(
    "PACS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SERIES_PER_STUDY = 5
INSTANCES_PER_SERIES = 2
QIDO_LIMIT = 100
CHUNK = 20_000
KINDS = ("PatientID exact", "PatientName prefix*", "StudyDate range + Modality", "Accession exact")
_SYLLABLES = "ka ro vel mi tan sor lin de bra gus hol fen ri pa mos tev ul nor ask zan".split()  # noqa: SIM905
_CYRILLIC = "ив ан ов пет ро сид ко лев ма рин ку зне цо ва ор лов".split()  # noqa: RUF001, SIM905
_GIVEN = "Anna Ivan Olga Petr John Maria Elena Pavel Sofia Nikolai Irina Alex".split()  # noqa: SIM905
_STUDY_TYPES = [  # (weight, series modalities)
    (40, ("CT", "CT", "CT", "CT", "SR")),
    (25, ("MR", "MR", "MR", "MR", "MR")),
    (15, ("CR", "CR", "CR", "CR", "CR")),
    (10, ("US", "US", "US", "US", "SR")),
    (5, ("PT", "CT", "PT", "CT", "SR")),
    (5, ("MG", "MG", "MG", "MG", "MG")),
]
_FIRST_DAY = date(2015, 1, 1)
_DAYS = (date(2026, 11, 25) - _FIRST_DAY).days


# ---------------------------------------------------------------- synthetic index


@dataclass
class StudyRow:
    """What a query needs to know about one generated study."""

    uid: str
    patient: int
    date: str
    accession: str
    modalities: tuple[str, ...]


@dataclass
class Corpus:
    """The generated patients (id, name) and studies."""

    patients: list[tuple[str, str]] = field(default_factory=list)
    studies: list[StudyRow] = field(default_factory=list)


def _name(rng: random.Random) -> str:
    syllables = _CYRILLIC if rng.random() < 0.1 else _SYLLABLES
    family = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))).capitalize()
    return f"{family}^{rng.choice(_GIVEN)}"


def generate(studies: int, seed: int = 20261125) -> Corpus:
    """Patients (about two studies each) and studies, deterministic for a seed."""
    rng = random.Random(seed)
    corpus = Corpus()
    for number in range(max(1, studies // 2)):
        corpus.patients.append((f"P{number:08d}", _name(rng)))
    weights = [weight for weight, _ in _STUDY_TYPES]
    for number in range(studies):
        (series,) = rng.choices([types for _, types in _STUDY_TYPES], weights)
        day = _FIRST_DAY + timedelta(days=rng.randrange(_DAYS))
        corpus.studies.append(
            StudyRow(
                uid=f"2.25.{10**12 + number}",
                patient=rng.randrange(len(corpus.patients)),
                date=day.strftime("%Y%m%d"),
                accession=f"A{number:09d}",
                modalities=series,
            )
        )
    return corpus


def _chunks(rows: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy(conn: Any, table: Any, rows: Iterator[dict[str, Any]], now: datetime) -> None:
    """PostgreSQL COPY of ``rows``; columns left out get their model default."""
    columns = list(table.columns)
    defaults: dict[str, Any] = {}
    for column in columns:
        default = column.default
        if default is None:
            defaults[column.name] = None
        elif getattr(default, "is_callable", False):
            defaults[column.name] = now
        else:
            defaults[column.name] = getattr(default, "arg", None)
    names = ", ".join(f'"{column.name}"' for column in columns)
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row.get(c.name, defaults[c.name]) for c in columns])


def load_index(engine: Engine, corpus: Corpus) -> float:
    """Insert the corpus into empty index tables (explicit primary keys); seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)

    def patients() -> Iterator[dict[str, Any]]:
        for pk, (patient_id, name) in enumerate(corpus.patients, start=1):
            yield {
                "pk": pk,
                "patient_id": patient_id,
                "patient_name": name,
                "patient_birth_date": "19700101",
                "patient_sex": "O",
                "created_at": now,
            }

    def studies() -> Iterator[dict[str, Any]]:
        for pk, s in enumerate(corpus.studies, start=1):
            yield {
                "pk": pk,
                "study_instance_uid": s.uid,
                "patient_pk": s.patient + 1,
                "study_date": s.date,
                "study_time": "120000",
                "accession_number": s.accession,
                "study_id": "1",
                "study_description": "SYNTHETIC",
                "modalities_in_study": "\\".join(sorted(set(s.modalities))),
                "number_of_study_related_series": SERIES_PER_STUDY,
                "number_of_study_related_instances": SERIES_PER_STUDY * INSTANCES_PER_SERIES,
                "created_at": now,
                "updated_at": now,
            }

    def series() -> Iterator[dict[str, Any]]:
        for study_pk, s in enumerate(corpus.studies, start=1):
            for number, modality in enumerate(s.modalities):
                pk = (study_pk - 1) * SERIES_PER_STUDY + number + 1
                yield {
                    "pk": pk,
                    "series_instance_uid": f"{s.uid}.{number + 1}",
                    "study_pk": study_pk,
                    "modality": modality,
                    "series_number": number + 1,
                    "series_date": s.date,
                    "number_of_series_related_instances": INSTANCES_PER_SERIES,
                    "created_at": now,
                    "updated_at": now,
                }

    def instances() -> Iterator[dict[str, Any]]:
        for series_pk in range(1, len(corpus.studies) * SERIES_PER_STUDY + 1):
            study = corpus.studies[(series_pk - 1) // SERIES_PER_STUDY]
            series_number = (series_pk - 1) % SERIES_PER_STUDY + 1
            for number in range(1, INSTANCES_PER_SERIES + 1):
                uid = f"{study.uid}.{series_number}.{number}"
                yield {
                    "pk": (series_pk - 1) * INSTANCES_PER_SERIES + number,
                    "sop_instance_uid": uid,
                    "series_pk": series_pk,
                    "sop_class_uid": CTImageStorage,
                    "instance_number": number,
                    "transfer_syntax_uid": ExplicitVRLittleEndian,
                    "rows": 512,
                    "columns": 512,
                    "object_key": f"bench/{uid}",
                    "size_bytes": 526_000,
                    "sha256": "0" * 64,
                    "received_at": now,
                }

    with engine.begin() as conn:
        for table, rows in (
            (Patient, patients()),
            (Study, studies()),
            (Series, series()),
            (Instance, instances()),
        ):
            if conn.dialect.name == "postgresql":
                _copy(conn, table.__table__, rows, now)
                continue
            for batch in _chunks(rows):
                conn.execute(insert(table), batch)
        if conn.dialect.name == "postgresql":  # explicit keys: move the sequences past them
            for table in (Patient, Study, Series, Instance):
                name = table.__tablename__
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'pk'), "
                        f"(SELECT max(pk) FROM {name}))"
                    )
                )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


# ---------------------------------------------------------------- queries


@dataclass
class Query:
    """One study-level query: its QIDO parameters (the same keys serve C-FIND)."""

    kind: str
    keys: dict[str, str]


def queries(corpus: Corpus, count: int, seed: int = 7) -> list[Query]:
    """``count`` queries of each kind, with values drawn from the indexed data."""
    rng = random.Random(seed)
    out: list[Query] = []
    for _ in range(count):
        study = rng.choice(corpus.studies)
        patient_id, name = corpus.patients[study.patient]
        first = datetime.strptime(study.date, "%Y%m%d").date()
        last = first + timedelta(days=6)
        out += [
            Query(KINDS[0], {"PatientID": patient_id}),
            Query(KINDS[1], {"PatientName": name.split("^")[0][:6] + "*"}),
            Query(
                KINDS[2],
                {
                    "StudyDate": f"{study.date}-{last:%Y%m%d}",
                    "ModalitiesInStudy": study.modalities[0],
                },
            ),
            Query(KINDS[3], {"AccessionNumber": study.accession}),
        ]
    return out


RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyInstanceUID",
)


def c_find_identifier(keys: dict[str, str]) -> Dataset:
    """A Study Root STUDY-level identifier: the matching keys and the usual return keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


class FindClient:
    """One Study Root C-FIND association used for every query."""

    def __init__(self, port: int, ae_title: str) -> None:
        ae = AE(ae_title="BENCHFIND")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.network_timeout = ae.dimse_timeout = 120
        self.assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if not self.assoc.is_established:
            raise RuntimeError(f"no association with {ae_title} on port {port}")
        # pynetdicom leaves Nagle on: command and data set PDUs would wait for delayed ACKs
        sock = self.assoc.dul.socket.socket  # type: ignore[union-attr]
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __call__(self, keys: dict[str, str]) -> int:
        matches = 0
        model = StudyRootQueryRetrieveInformationModelFind
        for status, _ in self.assoc.send_c_find(c_find_identifier(keys), model):
            if not status:
                raise RuntimeError("C-FIND: no response")
            if status.Status in (0xFF00, 0xFF01):
                matches += 1
            elif status.Status != 0:
                raise RuntimeError(f"C-FIND failed: 0x{status.Status:04X}")
        return matches

    def close(self) -> None:
        self.assoc.release()


def qido(client: httpx.Client, base: str) -> Callable[[dict[str, str]], int]:
    def run(keys: dict[str, str]) -> int:
        response = client.get(f"{base}/dicomweb/studies", params={**keys, "limit": QIDO_LIMIT})
        response.raise_for_status()
        return len(response.json())

    return run


def orthanc_find(client: httpx.Client, base: str) -> Callable[[dict[str, str]], int]:
    def run(keys: dict[str, str]) -> int:
        body = {"Level": "Study", "Query": keys, "Limit": QIDO_LIMIT, "Expand": True}
        try:
            response = client.post(f"{base}/tools/find", json=body)
        except httpx.RemoteProtocolError:  # Orthanc closed the idle keep-alive connection
            response = client.post(f"{base}/tools/find", json=body)
        response.raise_for_status()
        return len(response.json())

    return run


@dataclass
class Figure:
    """Latency of one query kind over one interface of one target."""

    target: str
    interface: str
    kind: str
    p50_ms: float
    p95_ms: float
    mean_matches: float
    runs: int


def measure(
    target: str,
    interface: str,
    run: Callable[[dict[str, str]], int],
    workload: list[Query],
    warmup: int = 8,
) -> list[Figure]:
    """Run every query (after a few warm-up ones); p50/p95 per kind."""
    for query in workload[:warmup]:
        run(query.keys)
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    matches: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for query in workload:
        started = time.perf_counter()
        found = run(query.keys)
        timings[query.kind].append((time.perf_counter() - started) * 1000)
        matches[query.kind].append(found)
    figures = []
    for kind in KINDS:
        values = sorted(timings[kind])
        figures.append(
            Figure(
                target,
                interface,
                kind,
                round(statistics.median(values), 1),
                round(values[max(0, int(len(values) * 0.95) - 1)], 1),
                round(statistics.mean(matches[kind]), 1),
                len(values),
            )
        )
        print(
            f"  {target:<24} {interface:<12} {kind:<28} p50 {figures[-1].p50_ms:7.1f} ms"
            f"  p95 {figures[-1].p95_ms:7.1f} ms  matches {figures[-1].mean_matches}",
            flush=True,
        )
    return figures


# ---------------------------------------------------------------- targets


def measure_c_find(target: str, port: int, ae_title: str, workload: list[Query]) -> list[Figure]:
    """``measure`` C-FIND on one association with ``ae_title`` on ``port``."""
    finder = FindClient(port, ae_title)
    try:
        return measure(target, "C-FIND", finder, workload)
    finally:
        finder.close()


def pacs_database(backend: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    """A fresh empty database URL for ``backend`` and how to drop it."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'index.sqlite3'}", lambda: None
    admin_url = make_url(POSTGRES_ADMIN)
    name = f"pacs_bench_query_{os.getpid()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.set(database=name).render_as_string(hide_password=False), drop


def bench_pacs(backend: str, corpus: Corpus, workload: list[Query], workdir: Path) -> list[Figure]:
    """Load the index on ``backend``, serve it, measure QIDO-RS and C-FIND."""
    url, drop = pacs_database(backend, workdir)
    try:
        settings = Settings.model_validate({"data_dir": workdir, "database_url": url})
        engine = create_index_engine(settings)
        upgrade(engine)
        seconds = load_index(engine, corpus)
        engine.dispose()
        print(f"{backend}: indexed {len(corpus.studies)} studies in {seconds:.0f} s", flush=True)
        server, base, dicom_port = serve_archive(workdir, {"PACS_DATABASE_URL": url})
        try:
            target = f"pacs {backend} {len(corpus.studies) // 1000}k"
            with httpx.Client(timeout=120) as client:
                figures = measure(target, "QIDO-RS", qido(client, base), workload)
            return figures + measure_c_find(target, dicom_port, "PACS", workload)
        finally:
            server.terminate()
            server.wait(30)
    finally:
        drop()


def orthanc_instance(corpus: Corpus, study: StudyRow) -> bytes:
    """One header-only instance of ``study`` for Orthanc."""
    patient_id, name = corpus.patients[study.patient]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{study.uid}.1.1")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{study.uid}.1.1"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = f"{study.uid}.1"
    ds.PatientName, ds.PatientID = name, patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study.date, "120000", study.accession
    ds.StudyID, ds.StudyDescription = "1", "SYNTHETIC"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study.modalities[0], 1, 1
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bench_orthanc(corpus: Corpus, count: int, workload: list[Query], workdir: Path) -> list[Figure]:
    """Orthanc loaded with the first ``count`` studies; C-FIND and /tools/find."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    dicom_port, http_port = free_port(), free_port()
    peers = {"bench": ("BENCHFIND", "127.0.0.1", free_port())}  # C-FIND needs a known AE
    with (
        running_orthanc(binary, workdir / "orthanc", dicom_port, http_port, peers) as base,
        httpx.Client(timeout=120) as client,
    ):
        started = time.perf_counter()
        for study in corpus.studies[:count]:
            client.post(
                f"{base}/instances", content=orthanc_instance(corpus, study)
            ).raise_for_status()
        print(
            f"orthanc: loaded {count} studies in {time.perf_counter() - started:.0f} s", flush=True
        )
        target = f"orthanc {count // 1000}k"
        figures = measure(target, "/tools/find", orthanc_find(client, base), workload)
        return figures + measure_c_find(target, dicom_port, "ORTHANC", workload)


# ---------------------------------------------------------------- report

DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- bench/query.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/query.py: end -->"


def merge(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures of several runs; a later run's (target, interface, query) replaces an
    earlier one's. Each figure keeps the date of its run."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for report in reports:
        for figure in report["figures"]:
            merged[(figure["target"], figure["interface"], figure["kind"])] = {
                **figure,
                "date": report["date"],
            }
    return list(merged.values())


def render(reports: list[dict[str, Any]]) -> str:
    """The generated Query section of docs/performance.md, from one or more runs."""
    last = reports[-1]
    rows = [
        f"| {f['target']} | {f['interface']} | {f['kind']} | {f['p50_ms']} | {f['p95_ms']} "
        f"| {f['mean_matches']} | {f['date']} |"
        for f in merge(reports)
    ]
    runs = "; ".join(f"{r['date']}: `{r.get('command', 'python -m bench.query')}`" for r in reports)
    return "\n".join(
        [
            BEGIN,
            "## Query: QIDO-RS and C-FIND (`bench/query.py`)",
            "",
            f"Runs: {runs}. Machine: {last['machine']}; PostgreSQL "
            f"{last.get('postgres', '?')}, Orthanc {last.get('orthanc', '?')} (no DICOMweb "
            "plugin in Debian's package: its C-FIND and REST `/tools/find` instead).",
            "",
            f"The archive's index holds {last['studies']} synthetic studies ({SERIES_PER_STUDY} "
            f"series of {INSTANCES_PER_SERIES} instances each, about two studies per patient, 10% "
            "Cyrillic names, dates 2015-2026), inserted straight into the index tables. Orthanc "
            f"holds the first {max(r.get('orthanc_studies', 0) for r in reports)} of them (one "
            "instance each: loading all five series of 100,000 studies through Orthanc's REST "
            f"API takes hours here). Each kind of query runs {last['queries']} times with values "
            "drawn from the data (so every query matches), after a few warm-up queries; latency "
            "is measured at the client. QIDO-RS: `GET /dicomweb/studies?...&limit="
            f"{QIDO_LIMIT}` on one keep-alive connection, the whole DICOM JSON response read and "
            "parsed (audit record included). C-FIND: Study Root, STUDY level, 10 return keys, "
            "on one association (TCP_NODELAY), every pending response received (C-FIND has no "
            f"limit). Orthanc `/tools/find` with `Limit: {QIDO_LIMIT}` and `Expand: true`. "
            "Queries: PatientID exact; PatientName = the first six letters of a family name + "
            "`*`; StudyDate one-week range + ModalitiesInStudy; AccessionNumber exact. "
            "`matches` is the mean number of results per query.",
            "",
            "| target | interface | query | p50 (ms) | p95 (ms) | matches | run |",
            "|---|---|---|---|---|---|---|",
            *rows,
            END,
        ]
    )


def _machine() -> str:
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _versions() -> dict[str, str]:
    found = {}
    with contextlib.suppress(Exception):
        engine = create_engine(POSTGRES_ADMIN)
        with engine.connect() as conn:
            found["postgres"] = str(conn.scalar(text("SHOW server_version")))
        engine.dispose()
    with contextlib.suppress(Exception):
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        run = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        found["orthanc"] = run.stdout.split()[1] if run.stdout.split() else "?"
    return found


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=100_000, help="studies to index")
    parser.add_argument(
        "--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"]
    )
    parser.add_argument("--queries", type=int, default=100, help="queries of each kind")
    parser.add_argument(
        "--orthanc-studies",
        type=int,
        default=10_000,
        help="studies loaded into Orthanc (0: skip Orthanc)",
    )
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="measure nothing: write docs/performance.md from these JSON results (in order)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "query.json")
    args = parser.parse_args(argv)
    if args.report:
        write_section(BEGIN, END, render([json.loads(path.read_text()) for path in args.report]))
        print(f"updated {DOC}")
        return 0
    corpus = generate(args.studies)
    workload = queries(corpus, args.queries)
    random.Random(1).shuffle(workload)
    figures: list[Figure] = []
    report: dict[str, Any] = {}

    def save() -> None:  # after every target: a later failure keeps what was measured
        report.update(
            {
                **_versions(),
                "queries": args.queries,
                "orthanc_studies": min(args.orthanc_studies, args.studies),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": _machine(),
                "studies": args.studies,
                "command": "python -m bench.query " + " ".join(argv or sys.argv[1:]),
                "figures": [vars(f) for f in figures],
            }
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        for backend in args.backends:
            workdir = Path(tmp) / backend
            workdir.mkdir()
            figures += bench_pacs(backend, corpus, workload, workdir)
            save()
        if args.orthanc_studies:
            count = min(args.orthanc_studies, args.studies)
            small = Corpus(corpus.patients, corpus.studies[:count])
            orthanc_workload = queries(small, args.queries, seed=8)
            figures += bench_orthanc(small, count, orthanc_workload, Path(tmp))
            save()
    save()
    print(f"written {args.out}")
    if args.write:
        write_section(BEGIN, END, render([report]))
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
