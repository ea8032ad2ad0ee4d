"""The authorization matrix: every protected route of the app x every role (and a caller with
none) -> allowed or refused, generated from the route table, so that a new route without a
row in ``viewer_api.access.ROUTES`` (and an expectation here) fails.

A refused request answers 403 (401 once unauthenticated callers are told apart); an allowed
one anything else (the dummy ids below make most of them 404, 400 or 422)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.audit.tables import AuditEvent
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.security.subject import Role
from testkit.subjects import ANONYMOUS, ROLE_SUBJECTS, as_subject, person, system
from viewer_api.access import ROUTES
from viewer_api.app import PUBLIC_ROUTERS, create_app


def protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route of ``app`` but the public ones."""
    public = {id(route) for router in PUBLIC_ROUTERS for route in router.routes}
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and id(route) not in public:
            found += [(method, route.path) for method in sorted(route.methods)]
    return found


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("matrix") / "var", log_level="WARNING")
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as http:
        yield http
    app.dependency_overrides.clear()


def _all_routes() -> list[tuple[str, str]]:
    return sorted(ROUTES)


EVERYONE = frozenset(ROLE_SUBJECTS) - {"anonymous"}
IMAGING_READERS = frozenset({"admin", "radiologist", "clinician", "patient", "modality", "system"})
FHIR_READERS = frozenset(
    {"admin", "radiologist", "clinician", "patient", "registrar", "analyst", "system"}
)
DIRECTORY_WRITERS = frozenset({"admin", "registrar", "system"})
ADMINS = frozenset({"admin"})


def expected(method: str, path: str) -> frozenset[str]:
    """Who may call ``method path`` (FHIR paths with ``resource_type`` = Organization)."""
    if path == "/fhir/metadata":
        return EVERYONE
    if path in ("/fhir", "/fhir/"):
        return frozenset({"admin", "system"})
    if path.startswith("/fhir/AuditEvent"):
        readers = method == "GET" or path.endswith("/_search")
        return frozenset({"admin", "patient"}) if readers else ADMINS
    if path == "/fhir/Patient/{patient_id}/$everything":
        return FHIR_READERS - {"registrar", "analyst"}
    if path.startswith("/fhir/"):
        if method == "GET" or path.endswith("/_search"):
            return FHIR_READERS
        return DIRECTORY_WRITERS
    if path.startswith("/dicomweb/"):
        return IMAGING_READERS if method == "GET" else frozenset({"admin", "modality", "system"})
    if path in ("/", "/api/studies", "/api/studies/{study_instance_uid}"):
        return IMAGING_READERS
    if path.startswith("/api/review/"):
        return frozenset({"admin", "radiologist"} if method == "GET" else {"radiologist"})
    if path.startswith("/api/jobs"):
        return frozenset({"admin", "radiologist"}) if method == "GET" else ADMINS
    if path == "/api/changes":
        return frozenset({"admin", "system"})
    if path.startswith(("/api/aes", "/api/webhooks", "/api/rules", "/api/quarantine")):
        return ADMINS
    raise AssertionError(f"no expectation for {method} {path}: add one with its policy row")


_PARAMETERS = {
    "study": "1.2.3",
    "series": "1.2.3.4",
    "instance": "1.2.3.4.5",
    "frames": "1",
    "frame": "1",
    "path:path": "x",
    "title": "NOSUCHAE",
    "resource_type": "Organization",
    "resource_id": "nosuch",
    "version_id": "1",
    "patient_id": "nosuch",
    "result": "999999",
    "job_id": "999999",
    "entry": "999999",
    "webhook_id": "999999",
    "event_id": "999999",
    "study_instance_uid": "1.2.3",
}


def concrete(path: str) -> str:
    for name, value in _PARAMETERS.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no dummy value for a parameter of {path}"
    return path


def test_every_route_has_a_policy_row(app: FastAPI) -> None:
    routes = protected_routes(app)
    assert routes, "the route table is empty: the app's routes were not found"
    missing = sorted(set(routes) - set(ROUTES))
    stale = sorted(set(ROUTES) - set(routes))
    assert missing == [], f"routes without an access policy row: {missing}"
    assert stale == [], f"policy rows of no route: {stale}"


@pytest.mark.parametrize(("method", "path"), _all_routes(), ids=lambda v: str(v))
def test_route_matrix(app: FastAPI, client: TestClient, method: str, path: str) -> None:
    allowed = expected(method, path)
    wrong = []
    for name, subject in ROLE_SUBJECTS.items():
        as_subject(app, subject)
        status = client.request(method, concrete(path)).status_code
        refused = status in (401, 403)
        if refused == (name in allowed):
            wrong.append(f"{name}: {status}")
    assert wrong == [], f"{method} {path}"


def test_refusals_are_audited(app: FastAPI) -> None:
    with TestClient(app) as client:
        as_subject(app, person(Role.CLINICIAN))
        assert (
            client.put("/api/aes/EVIL", json={"host": "10.0.0.1", "port": 104}).status_code == 403
        )
        as_subject(app, ANONYMOUS)
        assert client.get("/dicomweb/studies").status_code == 403
    app.dependency_overrides.clear()
    with Session(app.state.engine) as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.pk.desc()).limit(2)).all()
    assert [(r.user_name, r.resource, r.outcome) for r in rows] == [
        ("anonymous", "/dicomweb/studies", 403),
        ("clinician-OrgA", "/api/aes/EVIL", 403),
    ]


def test_fhir_types_follow_the_role(app: FastAPI, client: TestClient) -> None:
    """Beyond the route: patient data vs directories, and who writes what."""
    cases = [
        ("analyst", "GET", "/fhir/Patient", 403),
        ("analyst", "GET", "/fhir/Organization", 200),
        ("registrar", "GET", "/fhir/Observation", 403),
        ("registrar", "POST", "/fhir/Observation", 403),
        ("clinician", "POST", "/fhir/Organization", 403),
        ("patient", "POST", "/fhir/Observation", 403),
        ("modality", "GET", "/fhir/Organization", 403),
    ]
    for name, method, path, status in cases:
        as_subject(app, ROLE_SUBJECTS[name])
        got = client.request(method, path, json={"resourceType": path.split("/")[2]})
        assert got.status_code == status, (name, method, path, got.text)


def test_smart_scopes_narrow_a_system_client(app: FastAPI, client: TestClient) -> None:
    as_subject(app, system("system/Observation.rs"))
    assert client.get("/fhir/Observation").status_code == 200
    assert client.get("/fhir/Patient").status_code == 403
    assert client.post("/fhir/Observation", json={}).status_code == 403
    assert client.get("/dicomweb/studies").status_code == 403
    as_subject(app, system("system/ImagingStudy.rs"))
    assert client.get("/dicomweb/studies").status_code == 200
