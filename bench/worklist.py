"""Modality Worklist benchmark: MWL C-FIND answers from N active ServiceRequests.

Loads N referrals (a Patient and an active CT ServiceRequest each, scheduled over 20 days)
into a fresh index (SQLite, or ``--database-url`` PostgreSQL) through FHIR transaction
Bundles, then times the worklist source + matching + response building (what the MWL SCP
does per request, without the network) for one day and for all 20 days.

    .venv/bin/python -m bench.worklist --requests 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import text

from pacs.config import Settings
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.worklist import matches, response
from pacs.worklist.source import WorklistSource

DAYS = 20
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
CT = {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}


def load(store: FhirStore, count: int) -> float:
    """Create ``count`` patients with one active CT referral each; returns seconds."""
    started = time.perf_counter()
    entries = []
    for i in range(count):
        patient = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        entries.append(
            {
                "fullUrl": patient,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:1.2.3", "value": f"MRN{i}"}],
                    "name": [{"family": f"Петров{i}", "given": ["Иван"]}],
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        )
        entries.append(
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "identifier": [{"type": ACSN, "value": f"A{i}"}],
                    "code": CT,
                    "subject": {"reference": patient},
                    "occurrenceDateTime": f"2026-12-{1 + i % DAYS:02d}T10:00:00+03:00",
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
        )
    for start in range(0, len(entries), 400):
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": entries[start : start + 400],
        }
        store.process_bundle(bundle, "")
    return time.perf_counter() - started


def query(date: str) -> Dataset:
    """A modality's query: today's (or a range's) CT steps with the usual return keys."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID"):
        setattr(identifier, keyword, "")
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = ""
    identifier.ScheduledProcedureStepSequence = Sequence([step])
    return identifier


def main() -> None:
    """Load, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="mwl-bench-"))
    settings = Settings(data_dir=data_dir, database_url=args.database_url)
    engine = create_index_engine(settings)
    upgrade(engine)
    store = FhirStore(engine)
    print(f"loaded {args.requests} requests in {load(store, args.requests):.1f} s")
    if engine.dialect.name == "postgresql":  # statistics, as autovacuum would gather them
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    source = WorklistSource(store, engine)
    for label, date in (("one day", "20261205"), (f"{DAYS} days", f"20261201-202612{DAYS:02d}")):
        times, found = [], 0
        for _ in range(args.repeat):
            identifier = query(date)
            started = time.perf_counter()
            found = sum(
                1
                for item in source(identifier)
                if matches(identifier, item) and response(identifier, item)
            )
            times.append(time.perf_counter() - started)
        print(f"{label}: {found} items, median {statistics.median(times) * 1000:.0f} ms")
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {when}")


if __name__ == "__main__":
    main()
