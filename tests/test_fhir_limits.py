"""What one FHIR request can make the server hold: Bundles of at most
``fhir_max_bundle_entries``, no wildcard includes, and one budget of
``fhir_max_response_resources`` for a search with its includes and for all entries of a batch.

The regression: a 230 KB batch of searches (each ``_count=1000`` with includes) once grew the
server to 22 GB; here a 300-Observation case and a 200-search batch show the same shape at a
scale a test can afford, with the memory measured."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacs.fhir.errors import TooCostly
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.security.subject import LOCAL_ADMIN
from tests.conftest import Backend
from viewer_api.app import create_app
from viewer_api.deps import get_current_user

MAX_RESOURCES = 500
MAX_ENTRIES = 400
OBSERVATIONS = 300


def _case(observations: int) -> dict[str, Any]:
    """A transaction: one Patient and ``observations`` Observations about them."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:patient",
            "resource": {"resourceType": "Patient", "name": [{"family": "Bounded"}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(observations):
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": "urn:uuid:patient"},
                    "valueQuantity": {"value": i, "unit": "/min"},
                    "note": [{"text": "x" * 400}],
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _searches(count: int, url: str) -> dict[str, Any]:
    entry = {"request": {"method": "GET", "url": url}}
    return {"resourceType": "Bundle", "type": "batch", "entry": [entry] * count}


@pytest.fixture
def store(db_backend: Backend) -> Iterator[FhirStore]:
    engine = create_index_engine(db_backend.settings)
    fhir = FhirStore(
        engine,
        "http://archive/fhir",
        max_resources=MAX_RESOURCES,
        max_bundle_entries=MAX_ENTRIES,
    )
    fhir.process_bundle(_case(OBSERVATIONS))
    yield fhir
    engine.dispose()


def test_a_batch_of_wide_searches_stays_within_the_budget(store: FhirStore) -> None:
    """200 searches of 300 resources each (60 000 resources unbounded): the response carries
    at most the budget, later entries fail too-costly, and memory stays small."""
    batch = _searches(200, "Observation?_count=1000&_include=Observation:subject")
    tracemalloc.start()
    try:
        response = store.process_bundle(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    entries = response["entry"]
    carried = sum(
        1
        for e in entries
        for found in e.get("resource", {}).get("entry", [])
        if found["search"]["mode"] in ("match", "include")
    )
    assert carried <= MAX_RESOURCES
    assert entries[0]["response"]["status"] == "200 OK"
    assert len(entries[0]["resource"]["entry"]) == OBSERVATIONS + 1  # with the Patient
    refused = entries[-1]["response"]
    assert refused["status"].startswith("422")
    assert refused["outcome"]["issue"][0]["code"] == "too-costly"
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_a_page_with_includes_is_cut_at_the_budget(store: FhirStore) -> None:
    page = store.search("Patient", [("_revinclude", "Observation:subject")] * 3)
    modes = [e["search"]["mode"] for e in page["entry"]]
    assert modes.count("match") == 1
    assert modes.count("include") == OBSERVATIONS  # the repeats are one include
    small = FhirStore(store.engine, max_resources=100)
    cut = small.search("Patient", [("_revinclude", "Observation:subject")])
    modes = [e["search"]["mode"] for e in cut["entry"]]
    assert (modes.count("match"), modes.count("include"), modes[-1]) == (1, 99, "outcome")
    assert cut["entry"][-1]["resource"]["issue"][0]["code"] == "too-costly"
    with pytest.raises(TooCostly):
        _everything(small)  # 301 resources > 100


def _everything(store: FhirStore) -> None:
    from pacs.fhir.everything import everything

    [patient] = store.search("Patient", [])["entry"]
    everything(store, patient["resource"]["id"])


@pytest.fixture
def api(db_backend: Backend) -> Iterator[TestClient]:
    settings = db_backend.with_settings(
        emr_feed=False,
        fhir_max_bundle_entries=MAX_ENTRIES,
        fhir_max_response_resources=MAX_RESOURCES,
    )
    app = create_app(settings)
    app.dependency_overrides[get_current_user] = lambda: LOCAL_ADMIN
    with TestClient(app) as client:
        yield client


def test_http_bundle_entries_and_wildcards(api: TestClient) -> None:
    too_many = api.post("/fhir", json=_searches(MAX_ENTRIES + 1, "Patient"))
    assert too_many.status_code == 413
    assert too_many.json()["issue"][0]["code"] == "too-costly"
    assert api.post("/fhir", json=_searches(MAX_ENTRIES, "Patient")).status_code == 200
    for query in ("_include=*", "_revinclude=*:*", "_include=Patient:*"):
        response = api.get(f"/fhir/Patient?{query}")
        assert response.status_code == 400, query
        assert "wildcard" in response.json()["issue"][0]["diagnostics"]
    many = "&".join(f"_revinclude=Observation:subject{i}" for i in range(11))
    assert api.get(f"/fhir/Patient?{many}").status_code == 400


def test_history_carries_at_most_the_budget(db_backend: Backend) -> None:
    engine = create_index_engine(db_backend.settings)
    fhir = FhirStore(engine, max_resources=10)
    patient = fhir.create({"resourceType": "Patient", "active": True})
    for _ in range(14):
        fhir.update("Patient", patient["id"], {**patient, "active": False})
    history = fhir.history("Patient", patient["id"])
    assert history["total"] == 15
    assert [e["response"]["etag"] for e in history["entry"]][:2] == ['W/"15"', 'W/"14"']
    assert len(history["entry"]) == 10
    engine.dispose()
