"""FhirStore on SQLite and PostgreSQL: versions, history, conditional writes, search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import update

from pacs.fhir.errors import (
    InvalidResource,
    InvalidSearch,
    PreconditionFailed,
    ResourceConflict,
    ResourceGone,
    ResourceNotFound,
    StoredResourceInvalid,
    UnprocessableResource,
)
from pacs.fhir.resources import found
from pacs.fhir.schema import FhirResource
from pacs.fhir.store import FhirStore
from pacs.fhir.values import escape_search_value
from pacs.index.engine import create_index_engine
from tests.conftest import Backend

SNILS = "urn:oid:1.2.643.100.3"


@pytest.fixture
def store(db_backend: Backend) -> Iterator[FhirStore]:
    engine = create_index_engine(db_backend.settings)
    yield FhirStore(engine, base_url="http://x/fhir")
    engine.dispose()


def patient(snils: str, family: str = "Иванов", birth: str = "1960-05-01") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SNILS, "value": snils}],
        "name": [{"family": family, "given": ["Пётр"]}],
        "birthDate": birth,
    }


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    Bundle.model_validate(bundle)
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def test_versions_history_and_delete(store: FhirStore) -> None:
    created = store.create(patient("111-111-111 11"))
    pid = created["id"]
    assert created["meta"]["versionId"] == "1"
    assert store.read("Patient", pid) == created
    changed = {**created, "gender": "male"}
    updated = store.update("Patient", pid, changed, if_match='W/"1"')
    assert updated["meta"]["versionId"] == "2"
    with pytest.raises(PreconditionFailed):
        store.update("Patient", pid, changed, if_match='W/"1"')
    assert store.vread("Patient", pid, 1)["meta"]["versionId"] == "1"
    assert "gender" not in store.vread("Patient", pid, 1)
    history = store.history("Patient", pid)
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    store.delete("Patient", pid)
    with pytest.raises(ResourceGone):
        store.read("Patient", pid)
    assert ids(store.search("Patient", [("_id", pid)])) == []
    with pytest.raises(ResourceNotFound):
        store.read("Patient", "nope")


def test_bad_writes_change_nothing(store: FhirStore) -> None:
    with pytest.raises(InvalidResource) as err:
        store.create({"resourceType": "Patient", "birthDate": "1960-13-01"})
    assert err.value.outcome["issue"][0]["expression"] == ["Patient.birthDate"]
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/missing"},
    }
    with pytest.raises(UnprocessableResource) as err2:
        store.create(obs)
    assert err2.value.outcome["issue"][0]["expression"] == ["Observation.subject"]
    assert store.search("Observation", [("_summary", "count")])["total"] == 0
    pid = store.create(patient("222"))["id"]
    store.create({**obs, "subject": {"reference": f"Patient/{pid}"}})
    with pytest.raises(ResourceConflict):
        store.delete("Patient", pid)


def test_conditional_create_and_upsert(store: FhirStore) -> None:
    first = store.create_written(patient("333"), if_none_exist=f"identifier={SNILS}|333")
    again = store.create_written(patient("333"), if_none_exist=f"identifier={SNILS}|333")
    assert (first.status, again.status) == (201, 200)
    assert again.resource["id"] == first.resource["id"]
    store.create(patient("333"))
    with pytest.raises(PreconditionFailed):
        store.create(patient("333"), if_none_exist=f"identifier={SNILS}|333")
    up1 = store.upsert_by_identifier(patient("444"), SNILS, "444")
    up2 = store.upsert_by_identifier(patient("444"), SNILS, "444")
    assert up1 == up2  # nothing changed: no new version
    up3 = store.upsert_by_identifier(patient("444", family="Петров"), SNILS, "444")
    assert (up3["id"], up3["meta"]["versionId"]) == (up1["id"], "2")


def test_upsert_and_token_search_escape_special_characters(store: FhirStore) -> None:
    """One resource per identifier even when its value holds ``, $ | \\`` (an AI Device
    identifier is ``<analysis>@<model>=<version>,<model>=<version>``)."""
    system = "urn:pacs:ai-device"
    values = ["ct-chest@lung-seg=2.0,lung-densitometry=1.0", "a|b", "a$b", "a\\b", "a\\,b"]
    made = {}
    for value in values:
        device = {"resourceType": "Device", "identifier": [{"system": system, "value": value}]}
        first = store.upsert_by_identifier(device, system, value)
        assert store.upsert_by_identifier(device, system, value) == first
        made[value] = f"Device/{first['id']}"
    assert len(set(made.values())) == len(values)
    assert len(store.search("Device", [])["entry"]) == len(values)
    for value in values:
        token = f"{system}|{escape_search_value(value)}"
        assert ids(store.search("Device", [("identifier", token)])) == [made[value]]
    either = f"{escape_search_value(values[1])},{escape_search_value(values[2])}"
    assert sorted(ids(store.search("Device", [("identifier", either)]))) == sorted(
        [made["a|b"], made["a$b"]]
    )


def test_search_parameters(store: FhirStore) -> None:
    p1 = store.create(patient("555", family="Сидоров", birth="1950-01-02"))["id"]
    p2 = store.create(patient("666", family="Сидорова", birth="1990-07-08"))["id"]
    assert ids(store.search("Patient", [("identifier", f"{SNILS}|555")])) == [f"Patient/{p1}"]
    assert len(ids(store.search("Patient", [("family", "сидор")]))) == 2
    assert ids(store.search("Patient", [("family:exact", "Сидорова")])) == [f"Patient/{p2}"]
    assert ids(store.search("Patient", [("birthdate", "lt1960")])) == [f"Patient/{p1}"]
    assert ids(store.search("Patient", [("birthdate", "ge1990-07-08")])) == [f"Patient/{p2}"]
    assert ids(store.search("Patient", [("birthdate", "1990-07")])) == [f"Patient/{p2}"]
    by_date = ids(store.search("Patient", [("_sort", "-birthdate")]))
    assert by_date == [f"Patient/{p2}", f"Patient/{p1}"]
    with pytest.raises(InvalidSearch):
        store.search("Patient", [("shoe-size", "42")], strict=True)
    lenient = store.search("Patient", [("shoe-size", "42")])
    assert lenient["total"] == 2 and len(ids(lenient)) == 2
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"
    obs = store.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
            "subject": {"reference": f"Patient/{p1}"},
            "effectiveDateTime": "2024-03-01T10:00:00+03:00",
        }
    )["id"]
    found = store.search("Observation", [("subject:Patient.identifier", f"{SNILS}|555")])
    assert ids(found) == [f"Observation/{obs}"]
    assert ids(store.search("Observation", [("patient", p1), ("code", "http://loinc.org|1-8")]))
    assert ids(store.search("Observation", [("date", "2024-03-01T07:00:00Z")])) == [
        f"Observation/{obs}"
    ]
    assert ids(store.search("Observation", [("patient", p2)])) == []


def test_string_modifiers_exact_and_contains(store: FhirStore) -> None:
    """R4 string search: default = starts with, case- and accent-insensitive; ``:exact`` =
    the whole string, case and accents included; ``:contains`` = anywhere, insensitive."""
    ivanov = f"Patient/{store.create(patient('771', family='Иванов'))['id']}"
    ivanova = f"Patient/{store.create(patient('772', family='Иванова'))['id']}"

    def found(key: str, value: str) -> list[str]:
        return sorted(ids(store.search("Patient", [(key, value)], strict=True)))

    both = sorted([ivanov, ivanova])
    assert found("family", "иванов") == both
    assert found("family:exact", "Иванов") == [ivanov]
    assert found("family:exact", "Иванова") == [ivanova]
    assert found("family:exact", "иванов") == []  # case-sensitive
    assert found("family:exact", "Иван") == []  # the whole string
    assert found("given:exact", "Петр") == []  # accents count: the name is Пётр
    assert found("given:exact", "Пётр") == both
    assert found("family:contains", "ВАНОВ") == both  # noqa: RUF001 (Cyrillic)
    assert found("family:contains", "нова") == [ivanova]
    assert found("family", "ванов") == []  # not a prefix
    assert found("family:contains", "50%") == []  # LIKE wildcards are literal
    assert found("family:exact", "Иванов,Иванова") == both  # either value


def test_date_prefixes_sort_and_result_parameters(store: FhirStore) -> None:
    pid = store.create(patient("777"))["id"]
    enc = store.create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "2024-03-10T08:00:00Z", "end": "2024-03-12T08:00:00Z"},
        }
    )["id"]
    for day in ("2024-03-09", "2024-03-10", "2024-03-11"):
        store.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": day},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{enc}"},
                "effectiveDateTime": day,
            }
        )

    def days(*params: tuple[str, str]) -> list[str]:
        bundle = store.search("Observation", [("patient", pid), *params])
        return [e["resource"]["effectiveDateTime"] for e in bundle.get("entry", [])]

    assert days(("date", "ne2024-03-10")) == ["2024-03-09", "2024-03-11"]
    assert days(("date", "sa2024-03-10")) == ["2024-03-11"]
    assert days(("date", "eb2024-03-10")) == ["2024-03-09"]
    assert days(("date", "ge2024-03-10"), ("date", "le2024-03-10")) == ["2024-03-10"]
    assert days(("date", "2024-03-09,2024-03-11")) == ["2024-03-09", "2024-03-11"]
    assert days(("_sort", "-date")) == ["2024-03-11", "2024-03-10", "2024-03-09"]
    assert len(days(("date", "ap2024-03-10"))) == 3
    # a Period matches a day it overlaps only with ge/le, not with eq
    assert store.search("Encounter", [("date", "2024-03-11")])["total"] == 0
    assert store.search("Encounter", [("date", "ge2024-03-11")])["total"] == 1
    assert days(("_lastUpdated", "gt2000-01-01"), ("_count", "1")) == ["2024-03-09"]
    assert days(("_lastUpdated", "lt2000-01-01")) == []

    counted = store.search("Observation", [("patient", pid), ("_count", "0")])
    assert counted["total"] == 3 and "entry" not in counted
    assert [link["relation"] for link in counted["link"]] == ["self"]
    case = store.search(
        "Encounter",
        [("_id", enc), ("_revinclude", "Observation:encounter"), ("_include", "Encounter:patient")],
    )
    assert sorted(ids(case, "include")) == sorted(
        [f"Patient/{pid}", *ids(store.search("Observation", [("encounter", enc)]))]
    )
    with pytest.raises(InvalidSearch):
        store.search("Observation", [("_sort", "shoe-size")], strict=True)


def test_transaction_is_atomic(store: FhirStore) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:a",
                "resource": patient("888"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:a"},
                    "focus": [{"reference": "Device/missing"}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    with pytest.raises(UnprocessableResource) as err:
        store.process_bundle(bundle)
    assert err.value.outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.focus[0]"]
    assert store.search("Patient", [("identifier", f"{SNILS}|888")])["total"] == 0
    del bundle["entry"][1]["resource"]["focus"]
    result = store.process_bundle(bundle)
    pid = result["entry"][0]["resource"]["id"]
    assert result["entry"][1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}


def test_concurrent_conditional_creates_make_one(store: FhirStore) -> None:
    def create(_: int) -> int:
        written = store.create_written(patient("999"), if_none_exist=f"identifier={SNILS}|999")
        return written.status

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(create, range(4)))
    assert statuses == [200, 200, 200, 201]
    assert store.search("Patient", [("identifier", f"{SNILS}|999")])["total"] == 1


def test_stored_resources_are_validated_on_the_way_out(store: FhirStore) -> None:
    pid = store.create(patient("1010"))["id"]
    broken = json.dumps({"resourceType": "Patient", "id": pid, "birthDate": "not a date"})
    with store.engine.begin() as conn:
        conn.execute(
            update(FhirResource.__table__).where(FhirResource.id == pid).values(content=broken)
        )
    with pytest.raises(StoredResourceInvalid) as err:
        store.read("Patient", pid)
    assert err.value.status == 500
    assert err.value.outcome["issue"][0]["expression"] == ["Patient.birthDate"]
    with pytest.raises(StoredResourceInvalid):
        store.search("Patient", [("_id", pid)])


def test_found_lists_the_resources_of_a_searchset_not_its_outcome(store: FhirStore) -> None:
    pid = store.create(patient("777"))["id"]
    obs = store.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
    )["id"]
    bundle = store.search(
        "Observation", [("_id", obs), ("_include", "Observation:patient"), ("shoe-size", "42")]
    )
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "include", "outcome"]
    assert [(r["resourceType"], r["id"]) for r in found(bundle)] == [
        ("Observation", obs),
        ("Patient", pid),
    ]
    assert [r["id"] for r in found(bundle, "Patient")] == [pid]
    assert found(bundle, "OperationOutcome") == []
    assert found(store.search("Observation", [("_id", "none")])) == []
