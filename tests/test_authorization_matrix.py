"""The authorization matrix: every protected route of the app x every role (and a caller with
none) -> allowed or refused, generated from the route table, so that a new route without a
row in ``viewer_api.access.ROUTES`` (and an expectation here) fails.

The matrix runs twice: with subjects injected at the auth seam (``testkit.subjects``), and
over HTTP with real bearer tokens the archive signs (``testkit.auth.local_token``) on an app
with ``PACS_AUTH=local``, where a request without credentials, or with an expired token, one
for another audience, one signed by another key or one with ``alg: none``, answers 401 on
every route family. A refused request answers 403 (401, or a redirect to ``/login`` for a
web page, without credentials); an allowed one anything else (the dummy ids below make most
of them 404, 400 or 422). ``/fhir/metadata`` and the SMART configuration are public."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.audit.tables import AuditEvent
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.security.subject import Role
from pacs.security.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalTokens
from testkit.auth import bearer, local_token
from testkit.routes import protected_routes
from testkit.subjects import ANONYMOUS, ROLE_SUBJECTS, as_subject, person, system
from viewer_api.access import ROUTES
from viewer_api.app import create_app


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


IMAGING_READERS = frozenset({"admin", "radiologist", "clinician", "patient", "modality", "system"})
FHIR_READERS = frozenset(
    {"admin", "radiologist", "clinician", "patient", "registrar", "analyst", "system"}
)
DIRECTORY_WRITERS = frozenset({"admin", "registrar", "system"})
ADMINS = frozenset({"admin"})


def expected(method: str, path: str) -> frozenset[str]:
    """Who may call ``method path`` (FHIR paths with ``resource_type`` = Organization)."""
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
    routes = protected_routes(app)  # asserts it found routes
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


# ---------------------------------------------------------------- with real tokens


@pytest.fixture(scope="module")
def token_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """An app that authenticates (``PACS_AUTH=local``): no subject is injected."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tokens") / "var", auth="local", log_level="WARNING"
    )
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="module")
def token_client(token_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(token_app, follow_redirects=False) as http:
        yield http


@pytest.fixture(scope="module")
def tokens(token_app: FastAPI) -> dict[str, dict[str, str]]:
    """The Authorization header of a local account per role, with the identity of
    ``ROLE_SUBJECTS`` (organisation, practitioner, patient, a system client's scopes);
    anonymous sends none."""
    settings = token_app.state.settings
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for name, subject in ROLE_SUBJECTS.items():
        if name == "anonymous":
            continue
        token = local_token(
            settings,
            f"matrix-{name}",
            name,
            organisation=subject.organisation,
            patient=subject.patient,
            practitioner=subject.practitioner,
            scopes=subject.scopes,
        )
        headers[name] = bearer(token)
    return headers


def refused(answer: httpx.Response) -> bool:
    """401/403, or a web page's redirect to the login."""
    location = answer.headers.get("location", "")
    return answer.status_code in (401, 403) or (
        answer.status_code == 303 and location.startswith("/login")
    )


@pytest.mark.parametrize(("method", "path"), _all_routes(), ids=lambda v: str(v))
def test_route_matrix_with_tokens(
    token_client: TestClient, tokens: dict[str, dict[str, str]], method: str, path: str
) -> None:
    allowed = expected(method, path)
    wrong = []
    for name, headers in tokens.items():
        answer = token_client.request(method, concrete(path), headers=headers)
        if refused(answer) == (name in allowed):
            wrong.append(f"{name}: {answer.status_code}")
        if name == "anonymous" and answer.status_code == 403:
            wrong.append("anonymous: 403 instead of 401")
    assert wrong == [], f"{method} {path}"


SAMPLE = [
    ("GET", "/dicomweb/studies"),
    ("POST", "/dicomweb/studies"),
    ("GET", "/dicomweb/studies/{study}/metadata"),
    ("GET", "/fhir/{resource_type}"),
    ("POST", "/fhir/{resource_type}"),
    ("GET", "/fhir/Patient/{patient_id}/$everything"),
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/api/studies"),
    ("PUT", "/api/aes/{title}"),
    ("GET", "/api/review/{result}"),
    ("POST", "/api/jobs/{job_id}/cancel"),
    ("GET", "/api/changes"),
]
"""Routes of each family (DICOMweb, FHIR, /api) the identity cases are sent to."""


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(settings: Settings) -> dict[str, str]:
    """Tokens of the administrator account that must not hold: each would be allowed
    everywhere if it were accepted."""
    tokens = LocalTokens.at(settings.resolved_signing_key_file)
    claims = {"sub": "matrix-admin", "roles": ["admin"], "kind": "user", "idp": "local"}
    now = int(time.time())
    good = {**claims, "iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "iat": now, "nbf": now}
    another_key = ECKey.generate_key("P-256", private=True, auto_kid=True)
    header = {"alg": "ES256", "kid": tokens.key.kid, "typ": "JWT"}
    return {
        "expired": tokens.sign(claims, -120, LOCAL_AUDIENCE),
        "wrong audience": tokens.sign(claims, 300, "urn:someone-else"),
        "wrong signature": jwt.encode(header, {**good, "exp": now + 300}, another_key),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({**good, 'exp': now + 300})}.",
    }


@pytest.mark.parametrize(("method", "path"), SAMPLE, ids=lambda v: str(v))
def test_credentials_that_do_not_hold_are_401(
    token_app: FastAPI,
    token_client: TestClient,
    tokens: dict[str, dict[str, str]],
    method: str,
    path: str,
) -> None:
    url = concrete(path)
    assert not refused(token_client.request(method, url, headers=tokens["admin"]))
    none = token_client.request(method, url)
    assert none.status_code == 401, none.text
    assert none.headers["www-authenticate"].startswith("Bearer")
    for case, token in bad_tokens(token_app.state.settings).items():
        answer = token_client.request(method, url, headers=bearer(token))
        assert answer.status_code == 401, (case, answer.status_code, answer.text)
        assert 'error="invalid_token"' in answer.headers["www-authenticate"], case


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/.well-known/smart-configuration"])
def test_smart_discovery_is_public(token_client: TestClient, path: str) -> None:
    answer = token_client.get(path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    if path == "/fhir/metadata":
        assert body["resourceType"] == "CapabilityStatement"
        [rest] = body["rest"]
        assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    else:
        assert body["token_endpoint"].endswith("/login/token")
