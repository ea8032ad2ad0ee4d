"""Identity in the embedded default (``PACS_AUTH=local``): settings that refuse open access
off loopback, local accounts (argon2 hashes), the archive's own tokens, ``pacs users`` and
``pacs token``, the login page and its session cookie, and SMART discovery."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.security.accounts import (
    FIRST_ADMIN,
    add_account,
    authenticate,
    disable_account,
    ensure_first_admin,
    list_accounts,
    parse_roles,
)
from pacs.security.authn import SESSION_COOKIE, first_start
from pacs.security.errors import AccountError, NotAuthenticated
from pacs.security.subject import Role, Subject, SubjectKind
from pacs.security.tables import UserAccount
from pacs.security.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalTokens
from testkit.auth import bearer, local_token
from tests.conftest import ROOT, Backend
from viewer_api.app import create_app

# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_open_access_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(ValueError, match=r"PACS_AUTH=none .* refused"):
        Settings.load(auth="none", host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_open_access_is_allowed_on_loopback(host: str) -> None:
    assert Settings.load(auth="none", host=host).auth == "none"


def test_default_is_local_accounts_and_oidc_needs_an_issuer() -> None:
    assert Settings.load().auth == "local"
    with pytest.raises(ValueError, match="PACS_OIDC_ISSUER"):
        Settings.load(auth="oidc")


@pytest.mark.parametrize("algorithms", ["none", "HS256", "RS256,none", ""])
def test_oidc_algorithms_never_admit_none_or_hmac(algorithms: str) -> None:
    with pytest.raises(ValueError, match=r"PACS_OIDC_ALGORITHMS|algorithm"):
        Settings.load(oidc_algorithms=algorithms)
    with pytest.raises(ValueError):
        Settings.load(oidc_algorithms=tuple(algorithms.split(",")))


# ---------------------------------------------------------------- accounts


@pytest.fixture
def local(db_backend: Backend) -> Settings:
    """The backend's settings with local accounts (the suite's default is PACS_AUTH=none)."""
    return db_backend.with_settings(auth="local")


def _session(settings: Settings) -> Any:
    engine = create_index_engine(settings)
    return session_factory(engine)()


def test_accounts_hash_passwords_and_check_them(local: Settings) -> None:
    with _session(local) as session:
        add_account(session, "rad1", parse_roles(["radiologist"]), "s3cret-pass", "ORG-A", "P1")
        row = list_accounts(session)[0]
        assert (row.name, row.roles, row.organisation, row.practitioner) == (
            "rad1",
            {Role.RADIOLOGIST},
            "ORG-A",
            "P1",
        )
        hashed = session.scalar(select(UserAccount.password_hash))
        assert hashed.startswith("$argon2id$") and "s3cret-pass" not in hashed
        assert authenticate(session, "rad1", "s3cret-pass") is not None
        assert authenticate(session, "rad1", "wrong-pass") is None
        assert authenticate(session, "nobody", "s3cret-pass") is None
        disable_account(session, "rad1")
        assert authenticate(session, "rad1", "s3cret-pass") is None


@pytest.mark.parametrize(
    ("name", "roles", "password", "patient", "message"),
    [
        ("bad name", ["admin"], "long-enough", "", "invalid account name"),
        ("ok", ["wizard"], "long-enough", "", "unknown role"),
        ("ok", ["admin"], "short", "", "at least 8"),
        ("pat", ["patient"], "long-enough", "", "needs --patient"),
    ],
)
def test_bad_accounts_are_refused(
    local: Settings, name: str, roles: list[str], password: str, patient: str, message: str
) -> None:
    with _session(local) as session, pytest.raises(AccountError, match=message):
        add_account(session, name, parse_roles(roles), password, patient=patient)


def test_first_start_creates_one_administrator_once(local: Settings) -> None:
    with _session(local) as session:
        notice = first_start(local, session)
        assert notice is not None and "'admin'" in notice
        password = notice.split("password ", 1)[1].split()[0]
        account = authenticate(session, FIRST_ADMIN, password)
        assert account is not None and account.roles == {Role.ADMIN}
        assert first_start(local, session) is None
        assert ensure_first_admin(session) is None
    with _session(local.model_copy(update={"auth": "none"})) as session:
        assert first_start(local.model_copy(update={"auth": "none"}), session) is None


# ---------------------------------------------------------------- tokens


def test_signing_key_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "var" / "key.jwk"
    first = LocalTokens.at(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LocalTokens.at(path).key.kid == first.key.kid
    assert [p.name for p in path.parent.iterdir()] == ["key.jwk"]  # no temporary left


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_validation_pins_algorithm_issuer_audience_and_time(tmp_path: Path) -> None:
    tokens = LocalTokens.at(tmp_path / "key.jwk")
    alice = Subject("alice", SubjectKind.USER, frozenset({Role.CLINICIAN}), "ORG", "PR1", "")
    subject, provider = tokens.validate(tokens.issue(alice, 300))
    assert (subject.name, subject.roles, subject.organisation, subject.practitioner) == (
        "alice",
        {Role.CLINICIAN},
        "ORG",
        "PR1",
    )
    assert provider == "local"
    now = int(time.time())
    good = {"iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "sub": "alice", "exp": now + 300}
    other_key = ECKey.generate_key("P-256", private=True, auto_kid=True)

    def signed(claims: dict[str, Any], key: Any = tokens.key) -> str:
        return jwt.encode({"alg": "ES256", "kid": tokens.key.kid}, claims, key)

    rejected = {
        "expired": signed({**good, "exp": now - 120}),
        "not yet valid": signed({**good, "nbf": now + 600}),
        "wrong audience": signed({**good, "aud": "someone-else"}),
        "wrong issuer": signed({**good, "iss": "https://evil.example"}),
        "no exp": signed({k: v for k, v in good.items() if k != "exp"}),
        "another key": signed(good, other_key),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "tampered": signed(good)[:-6] + "AAAAAA",
        "garbage": "not-a-token",
    }
    assert tokens.validate(signed(good))[0].name == "alice"
    for case, token in rejected.items():
        with pytest.raises(NotAuthenticated):
            tokens.validate(token)
            pytest.fail(case)


# ---------------------------------------------------------------- HTTP


@pytest.fixture
def app(local: Settings) -> Iterator[FastAPI]:
    application = create_app(local)
    yield application
    application.state.engine.dispose()


def _users(settings: Settings) -> list[str]:
    engine = create_index_engine(settings)
    with session_factory(engine)() as session:
        names = [e.user_name for e in session.scalars(select(AuditEvent).order_by(AuditEvent.pk))]
    engine.dispose()
    return names


def test_api_needs_a_valid_bearer_token(app: FastAPI, local: Settings) -> None:
    client = TestClient(app)
    anonymous = client.get("/api/studies")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="pacs"'
    for path in ("/dicomweb/studies", "/fhir/Patient", "/api/jobs"):
        assert client.get(path).status_code == 401, path
    bad = client.get("/api/studies", headers=bearer("x.y.z"))
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert client.get("/api/studies", headers={"Authorization": "Basic YTpi"}).status_code == 401
    token = local_token(local, "rad1", "radiologist", organisation="ORG-A")
    assert client.get("/api/studies", headers=bearer(token)).status_code == 200
    assert _users(local) == ["rad1"]
    with _session(local) as session:
        disable_account(session, "rad1")
    assert client.get("/api/studies", headers=bearer(token)).status_code == 401
    assert client.get("/health").status_code == 200  # public
    assert client.get("/metrics").status_code == 200


def test_web_pages_redirect_to_the_login_and_the_session_cookie_opens_them(
    app: FastAPI, local: Settings
) -> None:
    local_token(local, "clin", "clinician")  # the account
    with _session(local) as session:
        add_account(session, "web", parse_roles(["clinician"]), "web-password", "ORG-B")
    client = TestClient(app, follow_redirects=False)
    page = client.get("/?x=1")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2F%3Fx%3D1"
    form = client.get(page.headers["location"])
    assert form.status_code == 200 and 'name="password"' in form.text
    assert 'value="/?x=1"' in form.text
    wrong = client.post("/login", data={"name": "web", "password": "nope", "next": "/"})
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
    login = client.post("/login", data={"name": "web", "password": "web-password", "next": "/"})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert client.get("/").status_code == 200
    assert client.get("/api/studies").status_code == 200  # the cookie works for the API too
    assert _users(local)[-1] == "web"
    assert client.post("/logout", headers={"Origin": "https://evil.example"}).status_code == 403
    out = client.post("/logout", headers={"Origin": "http://testserver"})  # as a browser sends
    assert out.status_code == 303
    client.cookies.clear()
    assert client.get("/").status_code == 303
    evil = client.post("/login", data={"name": "web", "password": "web-password", "next": "//x.y"})
    assert evil.headers["location"] == "/"  # no open redirect


def test_password_grant_and_smart_discovery(app: FastAPI, local: Settings) -> None:
    with _session(local) as session:
        add_account(session, "script", parse_roles(["system"]), "script-password")
    client = TestClient(app)
    refused = client.post("/login/token", data={"grant_type": "password", "username": "script"})
    assert refused.status_code == 400 and refused.json() == {"error": "invalid_grant"}
    granted = client.post(
        "/login/token",
        data={"grant_type": "password", "username": "script", "password": "script-password"},
    )
    assert granted.status_code == 200
    token = granted.json()["access_token"]
    assert client.get("/api/studies", headers=bearer(token)).status_code == 200
    smart = client.get("/fhir/.well-known/smart-configuration")
    assert smart.status_code == 200
    config = smart.json()
    assert config["token_endpoint"] == "http://testserver/login/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"patient/*.rs", "user/*.cruds", "system/*.rs"} <= set(config["scopes_supported"])
    capability = client.get("/fhir/metadata", headers=bearer(token)).json()
    CapabilityStatement.model_validate(capability)  # the security element is valid R4
    security = capability["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == config["authorization_endpoint"]
    assert uris["token"] == config["token_endpoint"]


def test_open_access_is_the_local_admin_but_presented_tokens_count(db_backend: Backend) -> None:
    settings = db_backend.settings  # PACS_AUTH=none
    app = create_app(settings)
    try:
        client = TestClient(app)
        assert client.get("/api/studies").status_code == 200
        token = local_token(settings, "ana", "radiologist", organisation="OrgA")
        assert client.get("/api/studies", headers=bearer(token)).status_code == 200
        assert client.get("/api/studies", headers=bearer("forged")).status_code == 401
        assert _users(settings) == ["local-admin", "ana"]
    finally:
        app.state.engine.dispose()


# ---------------------------------------------------------------- CLI


def _pacs(*args: str, data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_users_and_token_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    missing = _pacs("users", "list", data_dir=data_dir)
    assert missing.returncode == 2 and "--init" in missing.stderr
    added = _pacs(
        "users", "add", "pat1", "--role", "patient", "--patient", "PID-7", "--init",
        data_dir=data_dir,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip()
    assert len(password) >= 16 and "added account pat1 (patient)" in added.stderr
    given = _pacs(
        "users", "add", "rad2", "--role", "radiologist", "--role", "clinician",
        "--organisation", "ORG-C", "--practitioner", "PR-9", "--password-stdin",
        data_dir=data_dir, stdin="chosen-password\n",
    )  # fmt: skip
    assert given.returncode == 0 and given.stdout == "", given.stderr
    again = _pacs("users", "add", "rad2", "--role", "admin", data_dir=data_dir)
    assert again.returncode == 1 and "exists" in again.stderr
    listed = _pacs("users", "list", data_dir=data_dir)
    assert "pat1" in listed.stdout and "ORG-C" in listed.stdout
    printed = _pacs("token", "--user", "rad2", "--ttl", "600", data_dir=data_dir)
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    settings = Settings(data_dir=data_dir)
    subject, _ = LocalTokens.at(settings.resolved_signing_key_file).validate(token)
    assert subject.roles == {Role.RADIOLOGIST, Role.CLINICIAN}
    assert (subject.organisation, subject.practitioner) == ("ORG-C", "PR-9")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert 590 <= claims["exp"] - claims["iat"] <= 600
    with _session(settings) as session:
        assert authenticate(session, "rad2", "chosen-password") is not None
        assert authenticate(session, "pat1", password) is not None
    assert _pacs("users", "disable", "rad2", data_dir=data_dir).returncode == 0
    refused = _pacs("token", "--user", "rad2", data_dir=data_dir)
    assert refused.returncode == 1 and "no enabled account" in refused.stderr


def test_openapi_declares_the_bearer_scheme(app: FastAPI) -> None:
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/studies"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
