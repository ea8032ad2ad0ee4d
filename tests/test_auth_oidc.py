"""``PACS_AUTH=oidc`` against a real OpenID Connect provider (oauth2-mock-server from npm, run
with node): bearer tokens validated through discovery and the JWKS (iss, aud, exp, signature,
pinned algorithm, key rotation), claims mapped to the subject, and the web login through the
authorization-code flow with PKCE."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.security.authn import SESSION_COOKIE
from pacs.security.oidc import OidcProvider
from pacs.security.policy import reach
from pacs.security.subject import Role, SubjectKind
from pacs.security.tokens import LocalTokens
from testkit.auth import bearer
from testkit.net import free_port
from testkit.oidc import MockIssuer, install, start_issuer
from tests.conftest import make_backend, require
from viewer_api.app import create_app

AUDIENCE = "pacs-api"


@pytest.fixture(scope="module")
def issuer() -> Iterator[MockIssuer]:
    problem = install()
    require(problem is None, problem or "")
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Any, issuer: MockIssuer) -> Settings:
    backend = make_backend(request, tmp_path, "sqlite", "file")
    return backend.with_settings(
        auth="oidc",
        oidc_issuer=issuer.url,
        oidc_audience=AUDIENCE,
        oidc_jwks_min_refresh_seconds=0,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


def _users(settings: Settings) -> list[str]:
    engine = create_index_engine(settings)
    with session_factory(engine)() as session:
        names = [e.user_name for e in session.scalars(select(AuditEvent).order_by(AuditEvent.pk))]
    engine.dispose()
    return names


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_of_the_issuer_is_accepted_with_its_claims(
    app: FastAPI, settings: Settings, issuer: MockIssuer
) -> None:
    token = issuer.token(
        aud=AUDIENCE,
        preferred_username="dr.house",
        realm_access={"roles": ["radiologist", "offline_access", "clinician"]},
        organisation=["ORG-A"],
        practitioner="PR-1",
        scope="openid user/*.rs",
    )
    subject = app.state.authenticator.bearer(token, "10.0.0.9")
    assert subject.name == "dr.house" and subject.kind is SubjectKind.USER
    assert subject.roles == {Role.RADIOLOGIST, Role.CLINICIAN}
    assert (subject.organisation, subject.practitioner, subject.patient) == ("ORG-A", "PR-1", "")
    assert subject.scopes == {"openid", "user/*.rs"}
    client = TestClient(app)
    assert client.get("/api/studies", headers=bearer(token)).status_code == 200
    assert _users(settings) == ["dr.house"]
    system = issuer.token(aud=[AUDIENCE, "account"], realm_access={"roles": ["system"]})
    subject = app.state.authenticator.bearer(system)
    assert subject.kind is SubjectKind.SYSTEM and subject.roles == {Role.SYSTEM}


def test_reads_for_comes_from_the_configured_claim(
    settings: Settings, issuer: MockIssuer, tmp_path: Any
) -> None:
    """``PACS_OIDC_READS_FOR_CLAIM``: off by default, a radiologist's only, kept in the web
    session the archive signs, and part of the policy's reach."""
    claims = {"aud": AUDIENCE, "organisation": "ORG-A", "reads": {"orgs": ["ORG-B", "ORG-C"]}}
    radiologist = issuer.token(realm_access={"roles": ["radiologist"]}, **claims)
    clinician = issuer.token(realm_access={"roles": ["clinician"]}, **claims)
    off = OidcProvider(settings)
    assert off.authenticate(radiologist).reads_for == frozenset()
    on = OidcProvider(settings.model_copy(update={"oidc_reads_for_claim": "reads.orgs"}))
    subject = on.authenticate(radiologist)
    assert subject.reads_for == {"ORG-B", "ORG-C"}
    assert on.authenticate(clinician).reads_for == frozenset()
    found = reach(subject)
    assert found is not None and found.reads_for == {"ORG-B", "ORG-C"}
    tokens = LocalTokens.at(tmp_path / "key.jwk")
    session, _provider = tokens.validate(tokens.issue(subject, 60, "oidc"))
    assert session.reads_for == {"ORG-B", "ORG-C"}


def test_tokens_that_do_not_hold_get_401(app: FastAPI, issuer: MockIssuer) -> None:
    now = int(time.time())
    valid = {"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 300}
    stranger = RSAKey.generate_key(2048, private=True)

    def forged(header: dict[str, Any], claims: dict[str, Any] = valid) -> str:
        return jwt.encode(header, claims, stranger, algorithms=["RS256"])

    rejected = {
        "expired": issuer.token(aud=AUDIENCE, exp=now - 120),
        "not yet valid": issuer.token(aud=AUDIENCE, nbf=now + 600),
        "wrong audience": issuer.token(aud="another-api"),
        "no audience": issuer.token(),
        "wrong issuer": issuer.token(aud=AUDIENCE, iss="http://127.0.0.1:1/realms/evil"),
        "wrong signature": forged({"alg": "RS256", "kid": issuer.kid}),
        "unknown kid": forged({"alg": "RS256", "kid": "no-such-key"}),
        "alg none": f"{_b64({'alg': 'none', 'kid': issuer.kid})}.{_b64(valid)}.",
        "alg HS256": f"{_b64({'alg': 'HS256', 'kid': issuer.kid})}.{_b64(valid)}.c2ln",
    }
    client = TestClient(app)
    good = issuer.token(aud=AUDIENCE, realm_access={"roles": ["admin"]})
    assert client.get("/api/studies", headers=bearer(good)).status_code == 200
    for case, token in rejected.items():
        response = client.get("/api/studies", headers=bearer(token))
        assert response.status_code == 401, (case, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), case


def test_a_rotated_key_is_fetched_once_the_rate_limit_allows(
    settings: Settings, issuer: MockIssuer
) -> None:
    eager = create_app(settings)
    limited = create_app(settings.model_copy(update={"oidc_jwks_min_refresh_seconds": 3600}))
    try:
        before = issuer.token(aud=AUDIENCE, realm_access={"roles": ["admin"]})
        for app in (eager, limited):  # both cache the key set as it is now
            assert TestClient(app).get("/api/studies", headers=bearer(before)).status_code == 200
        new_kid = issuer.rotate()
        after = issuer.token(aud=AUDIENCE, realm_access={"roles": ["admin"]})
        assert json.loads(base64.urlsafe_b64decode(after.split(".")[0] + "=="))["kid"] == new_kid
        assert TestClient(eager).get("/api/studies", headers=bearer(after)).status_code == 200
        assert TestClient(limited).get("/api/studies", headers=bearer(after)).status_code == 401
    finally:
        eager.state.engine.dispose()
        limited.state.engine.dispose()


def test_an_unreachable_issuer_is_503(settings: Settings, issuer: MockIssuer) -> None:
    gone = settings.model_copy(update={"oidc_issuer": f"http://127.0.0.1:{free_port()}"})
    app = create_app(gone)
    try:
        token = issuer.token(aud=AUDIENCE)
        response = TestClient(app).get("/api/studies", headers=bearer(token))
        assert response.status_code == 503 and "identity provider" in response.text
    finally:
        app.state.engine.dispose()


def test_web_login_with_authorization_code_and_pkce(
    app: FastAPI, settings: Settings, issuer: MockIssuer
) -> None:
    issuer.set_claims(
        {
            "preferred_username": "dr.who",
            "realm_access": {"roles": ["clinician"]},
            "organisation": "ORG-B",
        }
    )
    try:
        client = TestClient(app, follow_redirects=False)
        page = client.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"
        start = client.get("/login", params={"next": "/"})
        assert start.status_code == 302
        authorize = urlsplit(start.headers["location"])
        endpoint = f"{authorize.scheme}://{authorize.netloc}{authorize.path}"
        assert endpoint == f"{issuer.url}/authorize"
        query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
        assert query["response_type"] == "code" and query["client_id"] == "pacs-web"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert query["redirect_uri"] == "http://testserver/login/callback"
        assert query["state"] and query["nonce"]
        # the browser at the provider: it answers with a redirect carrying the code
        answer = httpx.get(start.headers["location"], follow_redirects=False, timeout=10)
        callback = urlsplit(answer.headers["location"])
        returned = {k: v[0] for k, v in parse_qs(callback.query).items()}
        assert returned["state"] == query["state"]
        forged = client.get("/login/callback", params={**returned, "state": "forged"})
        assert forged.status_code == 401 and SESSION_COOKIE not in forged.cookies
        done = client.get(f"{callback.path}?{callback.query}")
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        assert SESSION_COOKIE in done.cookies
        assert client.get("/").status_code == 200
        assert _users(settings)[-1] == "dr.who"
        replay = client.get(f"{callback.path}?{callback.query}")  # the code is spent
        assert replay.status_code == 401
    finally:
        issuer.set_claims({})


def test_smart_configuration_names_the_issuer(app: FastAPI, issuer: MockIssuer) -> None:
    config = TestClient(app).get("/fhir/.well-known/smart-configuration").json()
    assert config["issuer"] == issuer.url
    assert config["authorization_endpoint"] == f"{issuer.url}/authorize"
    assert config["token_endpoint"] == f"{issuer.url}/token"
    assert config["jwks_uri"] == f"{issuer.url}/jwks"
    assert "S256" in config["code_challenge_methods_supported"]
