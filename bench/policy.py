"""Access-policy benchmark: what the reach filter adds to study-level QIDO-RS and C-FIND queries.

Run from the repository root::

    .venv/bin/python -m bench.policy --studies 20000 --backends sqlite postgresql --write

Indexes ``--studies`` synthetic studies like ``bench/query.py`` (its generator and loader), the
series of study *n* stored by organisation ``Org{n % 10}``; one patient in a hundred has a FHIR
Patient and an active Consent (half refusing ``Org0``, half refusing sharing outside the
treating organisations). The same four kinds of query as ``bench/query.py`` run in process,
through the code paths of the two protocols — QIDO-RS (``find_values``, non-hierarchical,
``limit`` 101) and C-FIND (``find``, every response data set built) — once unrestricted and once
as a radiologist of ``Org0`` who reads for the nine other organisations: the same matches, so
the difference is the cost of the filter alone: resolving the consent lists for the query
(``imaging_scope(subject, session)``, as each request and C-FIND does) and the conditions. The
network and HTTP/DIMSE encoding, the same in both, are left out: over the wire the relative
overhead is smaller still. p95 of each, and the overhead in percent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.query import (
    KINDS,
    QIDO_LIMIT,
    Corpus,
    Query,
    _machine,
    c_find_identifier,
    generate,
    load_index,
    pacs_database,
    queries,
)
from bench.report import write_section
from pacs.config import Settings
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.query import QueryModel
from pacs.query.find import find, find_values
from pacs.security.imaging import imaging_scope
from pacs.security.subject import Role, Subject, SubjectKind

ROOT = Path(__file__).resolve().parents[1]
ORGANISATIONS = [f"Org{n}" for n in range(10)]
READER = Subject(
    "bench-radiologist",
    SubjectKind.USER,
    frozenset({Role.RADIOLOGIST}),
    organisation="Org0",
    reads_for=frozenset(ORGANISATIONS[1:]),
)
BEGIN = "<!-- bench/policy.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/policy.py: end -->"


@dataclass
class Figure:
    backend: str
    interface: str
    kind: str
    p95_unrestricted_ms: float
    p95_filtered_ms: float
    overhead_percent: float
    matches: float


def assign_organisations(engine: Any) -> None:
    """Series of study n are stored by Org{n % 10}."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE series SET source_organisation = 'Org' || (study_pk % 10)"))


def add_consents(engine: Any, corpus: Corpus) -> None:
    """A FHIR Patient and an active deny Consent for one patient in a hundred."""
    store = FhirStore(engine)
    store.update("Organization", "Org0", {"resourceType": "Organization", "id": "Org0"})
    for number, (patient_id, _name) in enumerate(corpus.patients[::100]):
        patient = store.create(
            {"resourceType": "Patient", "identifier": [{"system": "urn:pid", "value": patient_id}]}
        )
        provision: dict[str, Any] = {"type": "deny"}
        if number % 2 == 0:
            provision["actor"] = [
                {
                    "role": {"coding": [{"code": "IRCP"}]},
                    "reference": {"reference": "Organization/Org0"},
                }
            ]
        store.create(
            {
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"code": "patient-privacy"}]},
                "category": [{"coding": [{"code": "INFA"}]}],
                "patient": {"reference": f"Patient/{patient['id']}"},
                "provision": provision,
            }
        )


Timings = dict[str, dict[str, tuple[list[float], list[float], list[int]]]]
"""interface -> kind -> (unrestricted ms, filtered ms, filtered matches)."""


def measure(engine: Any, workload: list[Query], subject: Subject) -> Timings:
    """Every query of ``workload`` unrestricted and within the reach of ``subject``,
    interleaved (so that both meet the same cache), on each protocol's code path; the
    filtered runs resolve the subject's scope for each query, as a request does."""
    out: Timings = {}
    with Session(engine) as session:

        def qido(keys: dict[str, str], restricted: bool) -> int:
            reach = imaging_scope(subject, session) if restricted else None
            matches = find_values(
                session,
                c_find_identifier(keys),
                QueryModel.STUDY_ROOT,
                hierarchical=False,
                limit=QIDO_LIMIT + 1,
                scope=reach,
            )
            return sum(1 for _ in matches)

        def c_find(keys: dict[str, str], restricted: bool) -> int:
            reach = imaging_scope(subject, session) if restricted else None
            identifier = c_find_identifier(keys)
            return sum(1 for _ in find(session, identifier, QueryModel.STUDY_ROOT, scope=reach))

        runs: tuple[tuple[str, Callable[[dict[str, str], bool], int]], ...] = (
            ("QIDO-RS", qido),
            ("C-FIND", c_find),
        )
        for interface, run in runs:
            for query in workload[:8]:
                run(query.keys, False)
                run(query.keys, True)
            results: dict[str, tuple[list[float], list[float], list[int]]] = {
                kind: ([], [], []) for kind in KINDS
            }
            for query in workload:
                plain, filtered, matches = results[query.kind]
                started = time.perf_counter()
                run(query.keys, False)
                plain.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                matches.append(run(query.keys, True))
                filtered.append((time.perf_counter() - started) * 1000)
            out[interface] = results
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


def bench_backend(
    backend: str, corpus: Corpus, workload: list[Query], workdir: Path
) -> list[Figure]:
    url, drop = pacs_database(backend, workdir)
    settings = Settings.model_validate(
        {"data_dir": workdir / backend, "database_url": url, "log_level": "WARNING"}
    )
    engine = create_index_engine(settings)
    try:
        upgrade(engine)
        load_index(engine, corpus)
        assign_organisations(engine)
        add_consents(engine, corpus)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))  # the FHIR tables too, as autovacuum would
        timings = measure(engine, workload, READER)
        figures = []
        for interface in ("QIDO-RS", "C-FIND"):
            for kind in KINDS:
                plain, filtered, matches = timings[interface][kind]
                before, after = p95(plain), p95(filtered)
                figure = Figure(
                    backend,
                    interface,
                    kind,
                    round(before, 2),
                    round(after, 2),
                    round((after - before) / before * 100, 1),
                    round(statistics.mean(matches), 1),
                )
                figures.append(figure)
                print(figure, flush=True)
        return figures
    finally:
        engine.dispose()
        drop()


def render(figures: list[Figure], command: str, studies: int, count: int) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Access policy: the reach filter on QIDO-RS and C-FIND (`bench/policy.py`)",
        "",
        f"Run: {now}: `{command}`. Machine: {_machine()}.",
        "",
        f"{studies} synthetic studies (as `bench/query.py`), their series stored by ten "
        "organisations; one patient in a hundred with an active deny Consent (half refusing "
        "Org0, half any organisation outside the treating one). Each kind of query runs "
        f"{count} times in process through the QIDO-RS path (`find_values`, limit 101) and "
        "the C-FIND path (`find`, response data sets built): unrestricted, then as a "
        "radiologist of Org0 reading for the nine others (the same matches but for the "
        "consents: only the filter's cost differs; each filtered query resolves the consent "
        "lists first, as a request does). Network and encoding, equal in both, are "
        "not included, so over the wire the relative overhead is lower.",
        "",
        "| backend | interface | query | p95 unrestricted (ms) | p95 with policy (ms) "
        "| overhead | matches |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.backend} | {f.interface} | {f.kind} | {f.p95_unrestricted_ms} "
            f"| {f.p95_filtered_ms} | {f.overhead_percent:+.1f} % | {f.matches} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20_000, help="studies to index")
    parser.add_argument("--queries", type=int, default=50, help="queries of each kind")
    parser.add_argument("--backends", nargs="+", default=["sqlite"])
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "policy.json")
    args = parser.parse_args(argv)
    corpus = generate(args.studies)
    workload = queries(corpus, args.queries)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            figures += bench_backend(backend, corpus, workload, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(f) for f in figures], indent=1))
    if args.write:
        command = "python -m bench.policy " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(BEGIN, END, render(figures, command, args.studies, args.queries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
