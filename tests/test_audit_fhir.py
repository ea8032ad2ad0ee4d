"""``/fhir/AuditEvent`` on SQLite and PostgreSQL: FHIR reads are recorded with their patient;
auditors (admin) search by patient, date, agent and entity with paging; a patient reads the
access log of their own record only, with organisation and practitioner names and
break-glass accesses flagged; other roles are refused; writes are refused; every resource
validates as an R4 AuditEvent (fhir.resources R4B)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from pacs.audit import Access, Protocol, record
from pacs.security.subject import LOCAL_ADMIN, Role, Subject, SubjectKind
from tests.conftest import Backend
from viewer_api.app import create_app
from viewer_api.deps import get_current_user

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def app(db_backend: Backend) -> Iterator[FastAPI]:
    application = create_app(db_backend.settings)
    yield application
    application.state.engine.dispose()


def act_as(app: FastAPI, subject: Subject) -> None:
    app.dependency_overrides[get_current_user] = lambda: subject


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def patient(identifier: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:pacs:patient-id", "value": identifier}],
        "name": [{"family": f"Secret{identifier}", "given": ["Name"]}],
    }


@pytest.fixture
def world(app: FastAPI) -> dict[str, Any]:
    """Two patients, an organisation, a practitioner; the clinician reads both patients and
    breaks the glass once."""
    client = TestClient(app)
    org = create(client, {"resourceType": "Organization", "name": "City Hospital No. 2"})
    doctor = create(
        client,
        {"resourceType": "Practitioner", "name": [{"given": ["Anna"], "family": "Petrova"}]},
    )
    p1, p2 = create(client, patient("P1")), create(client, patient("P2"))
    for pid in (p1, p2):  # in care at the clinician's organisation (the access policy)
        encounter = {
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "serviceProvider": {"reference": f"Organization/{org}"},
        }
        create(client, encounter)
    clinician = Subject(
        "anna",
        SubjectKind.USER,
        frozenset({Role.CLINICIAN}),
        organisation=org,
        practitioner=doctor,
        client_address="10.1.2.3",
    )
    act_as(app, clinician)
    assert client.get(f"/fhir/Patient/{p1}").status_code == 200
    assert client.get(f"/fhir/Patient/{p2}").status_code == 200
    with app.state.sessions() as session:
        access = Access.by(
            clinician,
            "read",
            f"/fhir/Patient/{p1}",
            protocol=Protocol.FHIR,
            patient="P1",
            break_glass="unconscious patient in the emergency department",
        )
        record(session, access)
    return {"client": client, "org": org, "doctor": doctor, "p1": p1, "p2": p2}


def entries(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    resources = [entry["resource"] for entry in bundle.get("entry", [])]
    for resource in resources:
        FhirAuditEvent.model_validate(resource)  # a valid R4 AuditEvent
    return resources


def patients_of(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in event["entity"]
        if e.get("role", {}).get("code") == "1"
    ]


def user_of(event: dict[str, Any]) -> str:
    return str(event["agent"][0]["who"]["identifier"]["value"])


def test_auditor_searches_by_patient_date_agent_entity(app: FastAPI, world: dict[str, Any]) -> None:
    client = world["client"]
    act_as(app, LOCAL_ADMIN)
    p1 = entries(client.get("/fhir/AuditEvent", params={"patient": "P1"}))
    assert [user_of(e) for e in p1] == ["anna", "anna"]
    assert all(patients_of(e) == ["P1"] for e in p1)
    # the auditor's own search of P1's record is itself recorded
    again = entries(client.get("/fhir/AuditEvent", params={"patient": f"Patient/{world['p1']}"}))
    assert [user_of(e) for e in again] == ["local-admin", "anna", "anna"]
    today = datetime.now(UTC).date()
    params = [("patient", "P1"), ("date", f"ge{today}")]
    since = entries(client.get("/fhir/AuditEvent", params=params))
    assert len(since) == 4
    tomorrow = today + timedelta(days=1)
    assert entries(client.get("/fhir/AuditEvent", params={"date": f"ge{tomorrow}"})) == []
    assert entries(client.get("/fhir/AuditEvent", params={"date": "le2000-01-01"})) == []
    by_agent = entries(client.get("/fhir/AuditEvent", params={"agent": "anna"}))
    assert len(by_agent) == 3
    by_doctor = entries(
        client.get("/fhir/AuditEvent", params={"agent": f"Practitioner/{world['doctor']}"})
    )
    assert len(by_doctor) == 3
    entity = entries(client.get("/fhir/AuditEvent", params={"entity": f"Patient/{world['p2']}"}))
    assert [patients_of(e) for e in entity] == [["P2"]]
    page = client.get("/fhir/AuditEvent", params={"agent": "anna", "_count": "2"}).json()
    assert page["total"] == 3 and len(page["entry"]) == 2
    following = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = entries(client.get(following.replace("http://testserver", "")))
    assert len(rest) == 1
    newest = entries(client.get("/fhir/AuditEvent", params={"agent": "anna"}))[0]
    read = client.get(f"/fhir/AuditEvent/{newest['id']}")
    assert read.status_code == 200 and read.json()["id"] == newest["id"]


def test_patient_reads_own_access_log_with_names(app: FastAPI, world: dict[str, Any]) -> None:
    client = world["client"]
    act_as(app, Subject("p1-user", SubjectKind.USER, frozenset({Role.PATIENT}), patient="P1"))
    log = entries(client.get("/fhir/AuditEvent"))
    assert [user_of(e) for e in log] == ["anna", "anna"]
    assert all(patients_of(e) == ["P1"] for e in log)
    agents = [a for e in log for a in e["agent"]]
    displays = {a["who"].get("display") for a in agents}
    assert {"City Hospital No. 2", "Anna Petrova"} <= displays
    glass = [e for e in log if e.get("purposeOfEvent")]
    assert len(glass) == 1
    assert glass[0]["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert "emergency" in glass[0]["purposeOfEvent"][0]["text"]
    text = str(log)
    assert "SecretP1" not in text and "SecretP2" not in text  # never a patient name
    mine = entries(client.get("/fhir/AuditEvent", params={"patient": "P1"}))
    assert [user_of(e) for e in mine] == ["p1-user", "anna", "anna"]  # own reads recorded too
    other = client.get("/fhir/AuditEvent", params={"patient": "P2"})
    assert other.status_code == 403
    assert other.json()["resourceType"] == "OperationOutcome"
    act_as(app, LOCAL_ADMIN)
    p2_event = entries(client.get("/fhir/AuditEvent", params={"patient": "P2"}))[0]["id"]
    act_as(app, Subject("p1-user", SubjectKind.USER, frozenset({Role.PATIENT}), patient="P1"))
    assert client.get(f"/fhir/AuditEvent/{p2_event}").status_code == 404
    assert client.get(f"/fhir/AuditEvent/{log[0]['id']}").status_code == 200
    assert "SecretP" not in str(entries(client.get("/fhir/AuditEvent")))


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.RADIOLOGIST, Role.ANALYST, Role.MODALITY])
def test_other_roles_are_refused(app: FastAPI, role: Role) -> None:
    act_as(app, Subject("someone", SubjectKind.USER, frozenset({role}), organisation="x"))
    client = TestClient(app)
    assert client.get("/fhir/AuditEvent").status_code == 403
    assert client.get("/fhir/AuditEvent/1").status_code == 403


def test_audit_events_cannot_be_written(app: FastAPI) -> None:
    client = TestClient(app)
    event = {"resourceType": "AuditEvent"}
    assert client.post("/fhir/AuditEvent", json=event, headers=FHIR_JSON).status_code == 405
    assert client.put("/fhir/AuditEvent/1", json=event, headers=FHIR_JSON).status_code == 405
    assert client.delete("/fhir/AuditEvent/1").status_code == 405


def test_capability_statement_lists_audit_event(app: FastAPI) -> None:
    statement = TestClient(app).get("/fhir/metadata").json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type"}
    assert {"patient", "date", "agent", "entity"} <= {p["name"] for p in entry["searchParam"]}
