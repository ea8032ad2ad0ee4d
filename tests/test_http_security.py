"""HTTP hardening: security headers on every response (CSP and framing on HTML, HSTS over
HTTPS) and CSRF protection of cookie-authenticated unsafe requests."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from testkit.auth import local_token
from tests.conftest import Backend, make_backend
from viewer_api.app import create_app

EVIL = "https://evil.example"


@pytest.fixture
def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path, "sqlite", "file")


@pytest.fixture
def app(sqlite_backend: Backend) -> Iterator[FastAPI]:
    application = create_app(sqlite_backend.settings)
    yield application
    application.state.engine.dispose()
    application.state.ingest.engine.dispose()


def test_every_response_is_nosniff_with_a_referrer_policy(app: FastAPI) -> None:
    with TestClient(app) as client:
        for path in ("/health", "/api/webhooks", "/nowhere", "/openapi.json"):
            answer = client.get(path)
            assert answer.headers["X-Content-Type-Options"] == "nosniff", path
            assert answer.headers["Referrer-Policy"] == "no-referrer", path
            assert "Strict-Transport-Security" not in answer.headers  # plain http


def test_html_gets_csp_and_no_framing_json_does_not(app: FastAPI) -> None:
    with TestClient(app) as client:
        page = client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # scripts: the default, 'self' only
        assert page.headers["X-Frame-Options"] == "DENY"
        data = client.get("/api/webhooks")
        assert "Content-Security-Policy" not in data.headers
        assert "X-Frame-Options" not in data.headers


def test_docs_page_allows_exactly_its_inline_script(app: FastAPI) -> None:
    with TestClient(app) as client:
        page = client.get("/docs")
    [script] = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = page.headers["Content-Security-Policy"]
    assert f"script-src 'self' 'sha256-{digest}'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline' 'sha" not in csp


def test_hsts_over_https_and_when_the_public_url_is_https(sqlite_backend: Backend) -> None:
    app = create_app(sqlite_backend.settings)
    with TestClient(app, base_url="https://pacs.example") as client:
        assert (
            client.get("/health")
            .headers["Strict-Transport-Security"]
            .startswith("max-age=31536000")
        )
    app.state.engine.dispose()
    behind_proxy = create_app(sqlite_backend.with_settings(public_base_url="https://pacs.example"))
    with TestClient(behind_proxy) as client:
        assert "Strict-Transport-Security" in client.get("/health").headers
    behind_proxy.state.engine.dispose()


def test_frame_policy_is_configurable(sqlite_backend: Backend) -> None:
    app = create_app(
        sqlite_backend.with_settings(
            content_security_policy="default-src 'self'; frame-ancestors 'self'",
            frame_options="SAMEORIGIN",
        )
    )
    with TestClient(app) as client:
        page = client.get("/")
    assert page.headers["Content-Security-Policy"].endswith("frame-ancestors 'self'")
    assert page.headers["X-Frame-Options"] == "SAMEORIGIN"
    app.state.engine.dispose()


def test_cross_site_cookie_post_is_refused(app: FastAPI) -> None:
    with TestClient(app) as client:
        client.cookies.set("pacs_session", "stolen-by-the-browser")
        answer = client.post("/api/jobs/1/cancel", headers={"Origin": EVIL})
        assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        referer = client.post("/api/jobs/1/cancel", headers={"Referer": f"{EVIL}/page"})
        assert referer.status_code == 403
        assert client.post("/api/jobs/1/cancel").status_code == 403  # no proof at all
        wrong = client.post(
            "/api/jobs/1/cancel", headers={"Origin": EVIL, "X-CSRF-Token": "guessed"}
        )
        assert wrong.status_code == 403
        assert client.delete("/api/webhooks/1", headers={"Origin": EVIL}).status_code == 403


@pytest.fixture
def web_app(sqlite_backend: Backend) -> Iterator[tuple[FastAPI, str]]:
    """The app with local accounts (the default) and an administrator's session cookie."""
    settings = sqlite_backend.with_settings(auth="local")
    application = create_app(settings)
    yield application, local_token(settings, "boss", "admin")
    application.state.engine.dispose()
    application.state.ingest.engine.dispose()


def test_same_origin_or_token_passes_and_bearer_is_exempt(web_app: tuple[FastAPI, str]) -> None:
    app, session = web_app
    with TestClient(app, base_url="http://pacs.example") as client:
        client.cookies.set("pacs_session", session)
        first = client.get("/health")
        token = first.cookies["pacs_csrf"]
        assert "samesite=strict" in first.headers["set-cookie"].lower()
        with_token = client.post(
            "/api/jobs/1/cancel", headers={"Origin": EVIL, "X-CSRF-Token": token}
        )
        assert with_token.status_code == 404  # past CSRF: the route answers (no such job)
        same_origin = client.post("/api/jobs/1/cancel", headers={"Origin": "http://pacs.example"})
        assert same_origin.status_code == 404
        same_referer = client.post(
            "/api/jobs/1/cancel", headers={"Referer": "http://pacs.example/review"}
        )
        assert same_referer.status_code == 404
        bearer = client.post(
            "/api/jobs/1/cancel",
            headers={"Origin": EVIL, "Authorization": f"Bearer {session}"},
        )
        assert bearer.status_code == 404  # a bearer token is never sent by a browser itself
        assert client.get("/api/webhooks", headers={"Origin": EVIL}).status_code == 200
    with TestClient(app) as client:  # no session cookie: nothing for CSRF to abuse
        assert client.post("/api/jobs/1/cancel", headers={"Origin": EVIL}).status_code == 401


def test_csrf_guards_a_real_web_session(web_app: tuple[FastAPI, str]) -> None:
    """The session cookie authenticates, a cross-site POST carrying it is refused, the same
    POST with the token gets through."""
    app, session = web_app
    with TestClient(app, base_url="http://pacs.example") as client:
        assert client.post("/api/jobs/1/cancel").status_code == 401  # nobody
        client.cookies.set("pacs_session", session)
        token = client.get("/api/webhooks").cookies["pacs_csrf"]
        assert client.post("/api/jobs/1/cancel", headers={"Origin": EVIL}).status_code == 403
        passed = client.post("/api/jobs/1/cancel", headers={"X-CSRF-Token": token})
        assert passed.status_code == 404  # authenticated by the cookie; no job 1
