"""The FHIR API of a running archive, driven by a real client (fhirpy) on SQLite and PostgreSQL;
everything the server answers is validated with the fhir.resources R4B models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from tests.conftest import RunningArchive, make_backend, start_archive, stop_archive

# one xdist worker for the whole module: its module-scoped archive starts once
pytestmark = pytest.mark.xdist_group("test_fhir_api")

SNILS = "urn:oid:1.2.643.100.3"
OMS = "urn:oid:1.2.643.2.69.1.1.1.6.228"
LOINC = "http://loinc.org"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningArchive]:
    """One running archive per database for the whole module (starting one is the slow part);
    the tests keep to their own patients, so they do not see each other's data."""
    tmp_path = tmp_path_factory.mktemp(f"fhir-{request.param}")
    backend = make_backend(request, tmp_path, request.param, "file")
    running = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_FHIR_MAX_BODY_BYTES=str(MAX_BODY),
        PACS_EMR_FEED="false",
        PACS_SERVE_WORKER="false",
        PACS_SCP_PROCESSES="1",
    )
    try:
        yield running
    finally:
        stop_archive(running)


def valid(body: Any) -> dict[str, Any]:
    """``body`` after checking it against its R4B model."""
    data = dict(body)
    get_fhir_model_class(data["resourceType"]).model_validate(data)
    return data


class Api:
    """Raw HTTP next to fhirpy, for status codes and headers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.content:
            assert response.headers["content-type"].startswith("application/fhir+json")
            valid(response.json())
        return response

    def total(self, rtype: str) -> int:
        return int(self.call("GET", f"/{rtype}", params={"_summary": "count"}).json()["total"])


def patient(snils: str, family: str = "Иванов") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": SNILS, "value": snils},
            {"system": OMS, "value": f"77{snils.replace('-', '')}"},
        ],
        "name": [{"family": family, "given": ["Пётр"]}],
        "gender": "male",
        "birthDate": "1961-04-12",
    }


def test_crud_history_and_conditions(server: RunningArchive) -> None:
    base = f"{server.http}/fhir"
    client = SyncFHIRClient(base)
    api = Api(base)
    caps = api.call("GET", "/metadata").json()
    types = {r["type"] for r in caps["rest"][0]["resource"]}
    assert {"Patient", "ImagingStudy", "DiagnosticReport", "Provenance", "Endpoint"} <= types

    org = client.resource("Organization", name="ГБУЗ Городская больница 1")
    org.save()
    pat = client.resource("Patient", **patient("123-456-789 01"))
    pat["managingOrganization"] = org.to_reference()
    pat.save()
    assert pat["meta"]["versionId"] == "1"
    fetched = client.reference("Patient", pat.id).to_resource()
    valid(fetched.serialize())
    assert fetched["identifier"][0]["value"] == "123-456-789 01"

    pat["gender"] = "female"
    pat.save()
    assert pat["meta"]["versionId"] == "2"
    read = api.call("GET", f"/Patient/{pat.id}")
    assert read.headers["etag"] == 'W/"2"'
    stale = {**pat.serialize(), "gender": "other"}
    conflict = api.call("PUT", f"/Patient/{pat.id}", json=stale, headers={"If-Match": 'W/"1"'})
    assert conflict.status_code == 412
    assert api.call("GET", f"/Patient/{pat.id}").json()["gender"] == "female"
    ok = api.call("PUT", f"/Patient/{pat.id}", json=stale, headers={"If-Match": 'W/"2"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"3"'
    assert ok.headers["location"].endswith(f"/Patient/{pat.id}/_history/3")

    history = api.call("GET", f"/Patient/{pat.id}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert api.call("GET", f"/Patient/{pat.id}/_history/1").json()["gender"] == "male"

    created = api.call("PUT", "/Patient/mrn-42", json={**patient("000"), "id": "mrn-42"})
    assert created.status_code == 201  # update as create

    # conditional create: one match -> 200 with it, several -> 412
    cond = {"If-None-Exist": f"identifier={SNILS}|123-456-789 01"}
    again = api.call("POST", "/Patient", json=patient("123-456-789 01"), headers=cond)
    assert again.status_code == 200 and again.json()["id"] == pat.id
    client.resource("Patient", **patient("123-456-789 01")).save()
    several = api.call("POST", "/Patient", json=patient("123-456-789 01"), headers=cond)
    assert several.status_code == 412
    with pytest.raises(MultipleResourcesFound):
        client.resources("Patient").search(identifier=f"{SNILS}|123-456-789 01").get()

    # delete: refused while referenced, then 410
    assert api.call("DELETE", f"/Organization/{org.id}").status_code == 409
    api.call("DELETE", f"/Patient/{pat.id}")
    pat_ref = client.reference("Patient", pat.id)
    with pytest.raises(ResourceNotFound):
        pat_ref.to_resource()
    assert api.call("GET", f"/Patient/{pat.id}").status_code == 410
    assert api.call("DELETE", f"/Organization/{org.id}").status_code == 204


def _case_bundle(n_obs: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"fullUrl": "urn:uuid:pat", "resource": patient("555-555-555 55", "Петров")},
        {
            "fullUrl": "urn:uuid:enc",
            "resource": {
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {"code": "AMB"},
                "subject": {"reference": "urn:uuid:pat"},
            },
        },
        {
            "fullUrl": "urn:uuid:study",
            "resource": {
                "resourceType": "ImagingStudy",
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}],
                "subject": {"reference": "urn:uuid:pat"},
                "encounter": {"reference": "urn:uuid:enc"},
                "started": "2024-03-01T10:00:00+03:00",
            },
        },
    ]
    for i in range(n_obs):
        entries.append(
            {
                "fullUrl": f"urn:uuid:obs{i}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "preliminary",
                    "code": {"coding": [{"system": LOINC, "code": f"1000{i}-0"}]},
                    "subject": {"reference": "urn:uuid:pat"},
                    "encounter": {"reference": "urn:uuid:enc"},
                    "derivedFrom": [{"reference": "urn:uuid:study"}],
                    "effectiveDateTime": f"2024-03-0{i + 1}T10:00:00Z",
                    "valueQuantity": {"value": i, "unit": "%"},
                },
            }
        )
    entries.append(
        {
            "fullUrl": "urn:uuid:report",
            "resource": {
                "resourceType": "DiagnosticReport",
                "status": "preliminary",
                "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
                "subject": {"reference": "urn:uuid:pat"},
                "encounter": {"reference": "urn:uuid:enc"},
                "imagingStudy": [{"reference": "urn:uuid:study"}],
                "result": [{"reference": f"urn:uuid:obs{i}"} for i in range(n_obs)],
                "effectiveDateTime": "2024-03-01T10:00:00Z",
            },
        }
    )
    # the report comes first: references resolve regardless of order
    entries.insert(0, entries.pop())
    for entry in entries:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_search_include_paging_bundles(server: RunningArchive) -> None:
    base = f"{server.http}/fhir"
    client = SyncFHIRClient(base)
    api = Api(base)
    response = client.execute("", method="post", data=_case_bundle(5))
    valid(response)
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 9
    report_id = response["entry"][0]["resource"]["id"]
    patient_id = response["entry"][1]["resource"]["id"]
    study_id = response["entry"][3]["resource"]["id"]
    report = client.reference("DiagnosticReport", report_id).to_resource()
    assert report["subject"]["reference"] == f"Patient/{patient_id}"

    reports = client.resources("DiagnosticReport").search(patient=patient_id)
    bundle = reports.include("DiagnosticReport", "result").fetch_raw()
    valid(bundle)
    modes = [e["search"]["mode"] for e in bundle["entry"]]
    assert modes == ["match"] + ["include"] * 5
    assert {e["resource"]["resourceType"] for e in bundle["entry"][1:]} == {"Observation"}

    studies = client.resources("ImagingStudy").search(_id=study_id)
    rev = studies.revinclude("DiagnosticReport", "imaging-study").fetch_raw()
    assert [e["resource"]["resourceType"] for e in rev["entry"]] == [
        "ImagingStudy",
        "DiagnosticReport",
    ]
    chained = client.resources("Observation").search(
        **{"subject:Patient.identifier": f"{SNILS}|555-555-555 55"}
    )
    assert chained.count() == 5
    coded = client.resources("Observation").search(code=f"{LOINC}|10002-0", patient=patient_id)
    assert [o["code"]["coding"][0]["code"] for o in coded.fetch()] == ["10002-0"]

    # paging with _count and _sort, followed by fhirpy through the next links
    mine = {"patient": patient_id}
    page = api.call("GET", "/Observation", params={**mine, "_count": 2, "_sort": "-date"}).json()
    assert page["total"] == 5 and len(page["entry"]) == 2
    assert {link["relation"] for link in page["link"]} == {"self", "next"}
    everything = client.resources("Observation").search(**mine).sort("-date").limit(2).fetch_all()
    dates = [o["effectiveDateTime"] for o in everything]
    assert dates == sorted(dates, reverse=True) and len(dates) == 5
    second = api.call("GET", page["link"][1]["url"].removeprefix(base)).json()
    assert {link["relation"] for link in second["link"]} == {"self", "next", "previous"}
    assert (
        api.call("GET", "/Observation", params={**mine, "date": "ge2024-03-04"}).json()["total"]
        == 2
    )
    assert (
        api.call("GET", "/Observation", params={**mine, "date": "lt2024-03-02"}).json()["total"]
        == 1
    )

    # POST _search with a form body
    form = api.call("POST", "/Observation/_search", data={"patient": patient_id, "_count": "1"})
    assert form.json()["total"] == 5 and len(form.json()["entry"]) == 1

    # batch: each entry on its own; a failing one does not stop the others
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("777"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {
                    **patient("888"),
                    "managingOrganization": {"reference": "Organization/none"},
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
        ],
    }
    result = api.call("POST", "", json=batch).json()
    statuses = [e["response"]["status"][:3] for e in result["entry"]]
    assert statuses == ["201", "422", "200"]
    assert result["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[1].resource.managingOrganization"
    ]


def test_bad_input_changes_nothing(server: RunningArchive) -> None:
    api = Api(f"{server.http}/fhir")
    pid = api.call("POST", "/Patient", json=patient("999")).json()["id"]
    before = {t: api.total(t) for t in ("Patient", "Observation", "DiagnosticReport")}
    bad: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/Patient", {"content": b'{"resourceType": "Patient",'}, 400),
        ("POST", "/Patient", {"json": {"resourceType": "Observation"}}, 400),
        ("POST", "/Patient", {"json": {"resourceType": "Patient", "birthDate": "1961-13-45"}}, 400),
        ("POST", "/Patient", {"json": {"resourceType": "Patient", "shoeSize": 42}}, 400),
        ("POST", "/Unicorn", {"json": {"resourceType": "Unicorn"}}, 404),
        (
            "POST",
            "/Observation",
            {
                "json": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "Patient/does-not-exist"},
                }
            },
            422,
        ),
        ("PUT", f"/Patient/{pid}", {"json": {**patient("999"), "id": "other"}}, 400),
        ("POST", "/Patient", {"content": b"x" * (MAX_BODY + 1)}, 413),
        ("POST", "/Patient", {"content": b"[" * 20000 + b"]" * 20000}, 400),
        (
            "POST",
            "/Patient",
            {"content": b"<Patient/>", "headers": {"content-type": "application/xml"}},
            415,
        ),
        (
            "GET",
            "/Patient",
            {"params": {"shoe-size": "42"}, "headers": {"Prefer": "handling=strict"}},
            400,
        ),
        ("GET", "/Patient", {"params": {"birthdate": "yesterday"}}, 400),
        ("GET", f"/Patient/{pid}", {"params": {"_format": "xml"}}, 406),
        ("GET", "/Patient", {"headers": {"Accept": "application/fhir+xml"}}, 406),
        ("POST", "", {"json": {"resourceType": "Bundle", "type": "collection"}}, 400),
    ]
    for method, path, kwargs, status in bad:
        kwargs.setdefault("headers", {}).setdefault("content-type", "application/fhir+json")
        response = api.call(method, path, **kwargs)
        assert response.status_code == status, (path, kwargs, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    invalid = api.call("POST", "/Patient", json={"resourceType": "Patient", "birthDate": "x"})
    assert invalid.json()["issue"][0]["expression"] == ["Patient.birthDate"]

    # a transaction whose last entry fails writes nothing
    bundle = _case_bundle(2)
    bundle["entry"][-1]["resource"]["subject"] = {"reference": "Patient/does-not-exist"}
    failed = api.call("POST", "", json=bundle)
    assert failed.status_code == 422
    assert failed.json()["issue"][0]["expression"][0].startswith(
        f"Bundle.entry[{len(bundle['entry']) - 1}]"
    )
    assert {t: api.total(t) for t in before} == before

    formatted = api.call("GET", "/Patient", params={"_format": "application/fhir+json", "_id": pid})
    assert formatted.json()["total"] == 1
    lenient = api.call("GET", "/Patient", params={"shoe-size": "42", "_id": pid}).json()
    assert lenient["total"] == 1
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"
    assert "shoe-size" not in lenient["link"][0]["url"]
    with pytest.raises(OperationOutcome):
        SyncFHIRClient(api.base, extra_headers={"Prefer": "handling=strict"}).resources(
            "Patient"
        ).search(shoe_size="42").fetch()
