"""The access policy over real data, on SQLite and PostgreSQL: another organisation's studies,
another patient, care relationships, break-glass, patient consent (from the next request on)
and the review sign-off in the signer's own name — over QIDO-RS, WADO-RS, /api/studies and
FHIR."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.records import ResultRecord, store_result
from pacs.audit.tables import AuditEvent
from pacs.emr.feed import EmrFeed
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.ingest.source import Source
from pacs.runtime import build_ingest
from pacs.security.fhir_scope import worklist_scope
from pacs.security.subject import Role, Subject
from testkit.dicom_factory import write_ct_series
from testkit.subjects import ORG_A, ORG_B, as_subject, patient, person
from tests.conftest import Backend
from viewer_api.app import create_app

DICOM_JSON = {"Accept": "application/dicom+json"}


@dataclass
class World:
    """Two organisations' studies (patients P-A at OrgA, P-B at OrgB) and their FHIR Patients."""

    app: FastAPI
    http: TestClient
    store: FhirStore
    studies: dict[str, str]  # PatientID -> StudyInstanceUID
    series: dict[str, str]  # PatientID -> SeriesInstanceUID
    patients: dict[str, str]  # PatientID -> FHIR Patient id

    def act(self, subject: Subject) -> TestClient:
        as_subject(self.app, subject)
        return self.http

    def qido(self, subject: Subject, **headers: str) -> set[str]:
        response = self.act(subject).get("/dicomweb/studies", headers={**DICOM_JSON, **headers})
        assert response.status_code == 200, response.text
        return {study["0020000D"]["Value"][0] for study in response.json()}

    def wado(self, subject: Subject, patient_id: str) -> int:
        url = f"/dicomweb/studies/{self.studies[patient_id]}/metadata"
        return self.act(subject).get(url).status_code

    def fhir_patients(self, subject: Subject) -> set[str]:
        response = self.act(subject).get("/fhir/Patient")
        assert response.status_code == 200, response.text
        return {e["resource"]["id"] for e in response.json().get("entry", [])}

    def listed(self, subject: Subject) -> set[str]:
        response = self.act(subject).get("/api/studies")
        assert response.status_code == 200, response.text
        return {row["study_instance_uid"] for row in response.json()["items"]}


def _organisation(store: FhirStore, org_id: str) -> None:
    store.update(
        "Organization",
        org_id,
        {"resourceType": "Organization", "id": org_id, "name": org_id},
    )


@pytest.fixture
def world(db_backend: Backend, tmp_path: Path) -> Iterator[World]:
    settings = db_backend.with_settings(radiologist_reads_for="RadCentre=OrgA")
    ingest = build_ingest(settings)
    engine = create_index_engine(settings)
    store = FhirStore(engine)
    studies, series, patients = {}, {}, {}
    for pid, org in (("P-A", ORG_A), ("P-B", ORG_B)):
        paths = write_ct_series(tmp_path / pid, slices=1, size=16, patient_id=pid)
        outcome = ingest.store_part10(paths[0].read_bytes(), Source("dimse", organisation=org))
        assert outcome.status.ok
        header = dcmread(paths[0], stop_before_pixels=True)
        studies[pid], series[pid] = header.StudyInstanceUID, header.SeriesInstanceUID
        fhir = store.create(
            {"resourceType": "Patient", "identifier": [{"system": "urn:pid", "value": pid}]}
        )
        patients[pid] = fhir["id"]
    for org in (ORG_A, ORG_B, "OrgC", "RadCentre"):
        _organisation(store, org)
    app = create_app(settings)
    with TestClient(app) as http:
        yield World(app, http, store, studies, series, patients)
    app.dependency_overrides.clear()
    app.state.engine.dispose()
    engine.dispose()


def test_an_organisation_sees_its_own_studies_only(world: World) -> None:
    a, b = world.studies["P-A"], world.studies["P-B"]
    radiologist_a = person(Role.RADIOLOGIST, ORG_A)
    assert world.qido(radiologist_a) == {a}
    assert world.listed(radiologist_a) == {a}
    assert world.wado(radiologist_a, "P-A") == 200
    assert world.wado(radiologist_a, "P-B") == 404  # not revealed either
    assert world.act(radiologist_a).get(f"/api/studies/{b}").status_code == 404
    assert world.act(radiologist_a).get(f"/dicomweb/studies/{b}/series").status_code == 404
    assert world.fhir_patients(radiologist_a) == {world.patients["P-A"]}
    assert world.act(radiologist_a).get(f"/fhir/Patient/{world.patients['P-B']}").status_code == 404
    assert world.qido(person(Role.RADIOLOGIST, ORG_B)) == {b}  # same query, other values
    assert world.qido(person(Role.MODALITY, ORG_B)) == {b}
    assert world.qido(person(Role.RADIOLOGIST, "RadCentre")) == {a}  # reads for OrgA
    assert world.qido(person(Role.RADIOLOGIST, "")) == set()  # acts for no organisation
    assert world.qido(person(Role.ADMIN, "")) == {a, b}


def test_a_patient_sees_their_own_record_only(world: World) -> None:
    me = patient("P-A")
    assert world.qido(me) == {world.studies["P-A"]}
    assert world.wado(me, "P-B") == 404
    assert world.fhir_patients(me) == {world.patients["P-A"]}
    other = {"resourceType": "Consent", **_consent(world.patients["P-B"], ORG_A)}
    assert world.act(me).post("/fhir/Consent", json=other).status_code == 403


def _consent(patient_id: str, refused: str | None, status: str = "active") -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny"}
    if refused:
        provision["actor"] = [
            {
                "role": {"coding": [{"code": "IRCP"}]},
                "reference": {"reference": f"Organization/{refused}"},
            }
        ]
    return {
        "status": status,
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "INFA"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "policyRule": {"coding": [{"code": "OPTOUT"}]},
        "provision": provision,
    }


def test_consent_withdrawal_hides_the_patient_from_the_next_request(world: World) -> None:
    radiologist_a = person(Role.RADIOLOGIST, ORG_A)
    study = world.studies["P-A"]
    assert world.qido(radiologist_a) == {study}
    me = patient("P-A")
    body = {"resourceType": "Consent", **_consent(world.patients["P-A"], ORG_A)}
    created = world.act(me).post("/fhir/Consent", json=body)
    assert created.status_code == 201, created.text
    assert world.qido(radiologist_a) == set()
    assert world.listed(radiologist_a) == set()
    assert world.wado(radiologist_a, "P-A") == 404
    assert world.fhir_patients(radiologist_a) == set()
    assert world.qido(me) == {study}  # the patient still sees their own record
    assert world.qido(person(Role.RADIOLOGIST, "RadCentre")) == {study}  # OrgA only refused
    consent = created.json()
    withdrawn = {**consent, "status": "inactive"}
    assert world.act(me).put(f"/fhir/Consent/{consent['id']}", json=withdrawn).status_code == 200
    assert world.qido(radiologist_a) == {study}


def test_refusing_sharing_outside_the_treating_organisation(world: World) -> None:
    study = world.studies["P-A"]
    body = {"resourceType": "Consent", **_consent(world.patients["P-A"], None)}
    assert world.act(patient("P-A")).post("/fhir/Consent", json=body).status_code == 201
    assert world.qido(person(Role.RADIOLOGIST, "RadCentre")) == set()  # reads for OrgA: outside
    assert world.qido(person(Role.RADIOLOGIST, ORG_A)) == {study}  # the treating organisation


def test_a_clinician_sees_patients_in_care_and_breaks_the_glass(world: World) -> None:
    clinician = person(Role.CLINICIAN, "OrgC")
    assert world.qido(clinician) == set()
    assert world.fhir_patients(clinician) == set()
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"code": "AMB"},
        "subject": {"reference": f"Patient/{world.patients['P-B']}"},
        "serviceProvider": {"reference": "Organization/OrgC"},
    }
    assert world.act(clinician).post("/fhir/Encounter", json=encounter).status_code == 201
    assert world.qido(clinician) == {world.studies["P-B"]}
    assert world.fhir_patients(clinician) == {world.patients["P-B"]}
    reason = {"X-Break-Glass-Reason": "unconscious patient in A&E"}
    assert world.qido(clinician, **reason) == set(world.studies.values())
    assert world.qido(person(Role.RADIOLOGIST, ORG_A), **reason) == {world.studies["P-A"]}
    with Session(world.app.state.engine) as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.user_name == clinician.name)
        ).all()
    flagged = [row for row in rows if row.break_glass]
    assert {row.break_glass_reason for row in flagged} == {"unconscious patient in A&E"}
    assert len(flagged) == 1 and flagged[0].resource == "/dicomweb/studies"


def test_review_sign_off_by_a_radiologist_in_their_own_name(world: World) -> None:
    engine = world.app.state.engine
    EmrFeed(engine, world.store, "http://archive.example").run_once()
    record = ResultRecord(
        world.studies["P-A"], 1, "ct-chest", world.series["P-A"], {"lung-seg": "2.0"},
        {"involvement_percent": 40.0, "ct_severity_grade": "CT-2"}, "", "", "", "",
    )  # fmt: skip
    result = store_result(engine, record)
    world.store.update("Practitioner", "rad-a", {"resourceType": "Practitioner", "id": "rad-a"})
    url, sign = f"/api/review/{result}", {"decision": "sign", "conclusion": "Pneumonia."}
    assert world.act(person(Role.ADMIN, "")).post(url, json=sign).status_code == 403
    assert world.act(person(Role.CLINICIAN)).post(url, json=sign).status_code == 403
    radiologist = person(Role.RADIOLOGIST, ORG_A, practitioner="rad-a")
    forged = {**sign, "practitioner": "Practitioner/someone-else"}
    assert world.act(radiologist).post(url, json=forged).status_code == 403
    assert world.act(person(Role.RADIOLOGIST, ORG_B)).post(url, json=sign).status_code == 404
    signed = world.act(radiologist).post(url, json=sign)
    assert signed.status_code == 200, signed.text
    decision = signed.json()["decision"]
    assert decision["practitioner"] == "Practitioner/rad-a"
    assert decision["signer"] == radiologist.name and decision["organisation"] == ORG_A


def test_admin_surfaces_refuse_other_roles(world: World) -> None:
    body = {"host": "10.0.0.1", "port": 104, "organisation": ORG_A}
    for role in (Role.RADIOLOGIST, Role.CLINICIAN, Role.MODALITY, Role.SYSTEM):
        assert world.act(person(role)).put("/api/aes/EVIL", json=body).status_code == 403
    assert world.act(person(Role.ADMIN, "")).put("/api/aes/GOOD", json=body).status_code == 201


def test_a_modality_worklist_holds_its_organisations_requests(world: World) -> None:
    def request(patient: str, performer: str) -> dict[str, Any]:
        return world.store.create(
            {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{world.patients[patient]}"},
                "performer": [{"reference": f"Organization/{performer}"}],
            }
        )

    def worklist(subject: Subject) -> set[str]:
        bundle = world.store.search("ServiceRequest", [], scope=worklist_scope(subject))
        return {entry["resource"]["id"] for entry in bundle.get("entry", [])}

    for_a, for_b = request("P-A", ORG_A), request("P-B", ORG_B)
    assert worklist(person(Role.MODALITY, ORG_A)) == {for_a["id"]}
    assert worklist(person(Role.MODALITY, ORG_B)) == {for_b["id"]}
    assert worklist(person(Role.ADMIN, "")) == {for_a["id"], for_b["id"]}
    world.store.create({"resourceType": "Consent", **_consent(world.patients["P-A"], ORG_A)})
    assert worklist(person(Role.MODALITY, ORG_A)) == set()
