"""Webhook receivers cannot reach inside: the SSRF guard at registration and on every
connection, no redirects followed; a receiver's secret is changed only by id by an admin; a
new receiver starts at the current end of the feed unless an admin grants history."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pacs.config import Settings
from pacs.jobs.webhooks import WebhookSender, deliveries, signature
from pacs.net_guard import DestinationGuard, ForbiddenDestination, guarded_client
from pacs.security.subject import Role, Subject, SubjectKind
from tests.conftest import Backend, free_port
from tests.test_webhooks import emit
from viewer_api.app import create_app
from viewer_api.deps import get_current_user

CLINICIAN = Subject("doc", SubjectKind.USER, frozenset({Role.CLINICIAN}), organisation="A")


class Server:
    """A local HTTP server answering every POST with ``status`` (and ``location``); it
    keeps the requests it got."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    receiver = Server()
    yield receiver
    receiver.close()


def _app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    yield app
    app.state.engine.dispose()
    app.state.ingest.engine.dispose()


@pytest.fixture
def app(db_backend: Backend) -> Iterator[FastAPI]:
    """The API with no allow-listed network (the production default)."""
    yield from _app(db_backend.settings)


@pytest.fixture
def local_app(db_backend: Backend) -> Iterator[FastAPI]:
    """The API with this machine's loopback network allow-listed (test receivers)."""
    yield from _app(db_backend.with_settings(webhook_allowed_networks="127.0.0.0/8"))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_internal_addresses_are_refused_unless_allow_listed(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    assert kind in DestinationGuard().refusal(ip)
    network = ipaddress.ip_network(address)
    assert DestinationGuard([network]).refusal(ip) == ""
    assert DestinationGuard().refusal(ipaddress.ip_address("93.184.216.34")) == ""


def test_own_address_is_refused_and_schemes_other_than_http_are() -> None:
    guard = DestinationGuard(own=["93.184.216.34"])
    assert "own address" in guard.refusal(ipaddress.ip_address("93.184.216.34"))
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "http:///nohost"):
        with pytest.raises(ForbiddenDestination, match="http"):
            DestinationGuard().check_url(url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8000/api/rules/reload", "loopback"),
        ("http://localhost/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.5/hook", "private"),
        ("http://[::1]/hook", "loopback"),
    ],
)
def test_registration_of_an_internal_url_is_refused_with_400(
    app: FastAPI, url: str, words: str
) -> None:
    with TestClient(app) as client:
        answer = client.post("/api/webhooks", json={"url": url})
        assert answer.status_code == 400
        detail = answer.json()["detail"]
        assert words in detail and "webhook_allowed_networks" in detail
        assert client.get("/api/webhooks").json() == []


def test_allow_listed_network_is_accepted(local_app: FastAPI, server: Server) -> None:
    with TestClient(local_app) as client:
        assert client.post("/api/webhooks", json={"url": server.url}).status_code == 201


def test_re_post_keeps_the_secret_and_only_an_admin_changes_it_by_id(
    local_app: FastAPI, server: Server
) -> None:
    settings: Settings = local_app.state.settings
    engine = local_app.state.engine
    with TestClient(local_app) as client:
        created = client.post("/api/webhooks", json={"url": server.url, "secret": "original"})
        hook = created.json()["id"]
        again = client.post("/api/webhooks", json={"url": server.url, "secret": "attacker"})
        assert again.status_code == 409 and f"/api/webhooks/{hook}" in again.json()["detail"]
        emit(engine, 1)
        sender = WebhookSender(settings, engine, "test")
        try:
            assert sender.run_once() == 1
            first = server.requests[-1]
            assert first["headers"]["X-PACS-Signature"] == signature("original", first["body"])
            local_app.dependency_overrides[get_current_user] = lambda: CLINICIAN
            refused = client.put(f"/api/webhooks/{hook}", json={"secret": "attacker"})
            assert refused.status_code == 403
            local_app.dependency_overrides.clear()
            changed = client.put(f"/api/webhooks/{hook}", json={"secret": "rotated"})
            assert changed.status_code == 200 and changed.json()["signed"] is True
            assert client.put("/api/webhooks/999999", json={"secret": "x"}).status_code == 404
            emit(engine, 1, start=1)
            assert sender.run_once() == 1
            second = server.requests[-1]
            assert second["headers"]["X-PACS-Signature"] == signature("rotated", second["body"])
        finally:
            sender.stop()


def test_new_receiver_starts_now_and_only_an_admin_grants_history(
    local_app: FastAPI, server: Server
) -> None:
    engine = local_app.state.engine
    emit(engine, 3)
    with TestClient(local_app) as client:
        local_app.dependency_overrides[get_current_user] = lambda: CLINICIAN
        history = client.post("/api/webhooks", json={"url": server.url, "since": 0})
        assert history.status_code == 403
        local_app.dependency_overrides.clear()
        hook = client.post("/api/webhooks", json={"url": server.url}).json()
    sender = WebhookSender(local_app.state.settings, engine, "test")
    try:
        assert sender.run_once() == 0 and server.requests == []
        emit(engine, 1, start=3)
        assert sender.run_once() == 1
        seqs = [e["seq"] for e in _events(server.requests[-1]["body"])]
        assert seqs == [hook["cursor_seq"] + 1]
    finally:
        sender.stop()


def _events(body: bytes) -> list[dict[str, Any]]:
    import json

    return list(json.loads(body)["events"])


def test_redirect_to_loopback_is_not_followed(db_backend: Backend) -> None:
    target = Server()
    redirecting = Server(status=307, location=target.url)
    settings = db_backend.with_settings(webhook_allowed_networks="127.0.0.0/8")
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            assert client.post("/api/webhooks", json={"url": redirecting.url}).status_code == 201
        emit(app.state.engine, 1)
        sender = WebhookSender(settings, app.state.engine, "test")
        try:
            assert sender.run_once() == 0
        finally:
            sender.stop()
        assert len(redirecting.requests) == 1 and target.requests == []
        [attempt] = deliveries(app.state.engine, 1)
        assert not attempt["ok"] and "not followed" in attempt["error"]
    finally:
        app.state.engine.dispose()
        app.state.ingest.engine.dispose()
        target.close()
        redirecting.close()


def test_delivery_checks_the_address_it_connects_to(db_backend: Backend, server: Server) -> None:
    """A receiver registered while its address was allowed (or whose DNS answer changed
    since) is refused at connection time: nothing reaches the internal address."""
    allowed = db_backend.with_settings(webhook_allowed_networks="127.0.0.0/8")
    app = create_app(allowed)
    try:
        with TestClient(app) as client:
            assert client.post("/api/webhooks", json={"url": server.url}).status_code == 201
        emit(app.state.engine, 1)
        sender = WebhookSender(db_backend.settings, app.state.engine, "test")  # no allow-list
        try:
            assert sender.run_once() == 0
        finally:
            sender.stop()
        assert server.requests == []
        [attempt] = deliveries(app.state.engine, 1)
        assert not attempt["ok"] and "loopback" in attempt["error"]
    finally:
        app.state.engine.dispose()
        app.state.ingest.engine.dispose()


def test_a_configured_internal_url_is_logged_not_registered(
    db_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    settings = db_backend.with_settings(webhook_urls="http://10.0.0.7/hook")
    app = create_app(settings)
    sender = WebhookSender(settings, app.state.engine, "test")
    try:
        sender.sync_configured()
        assert "10.0.0.7 is a private address" in caplog.text
        with TestClient(app) as client:
            assert client.get("/api/webhooks").json() == []
    finally:
        sender.stop()
        app.state.engine.dispose()
        app.state.ingest.engine.dispose()


def test_a_host_with_several_addresses_is_tried_address_by_address(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolving to several addresses: all are checked, then tried in turn (the first,
    127.0.0.2, has no listener); one refused address refuses the name."""
    port = server.server.server_address[1]
    answers = {"receiver.test": ["127.0.0.2", "127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"]}
    resolve = socket.getaddrinfo

    def fake(host: str, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    guard = DestinationGuard([ipaddress.ip_network("127.0.0.0/8")])
    client = guarded_client(guard, timeout=5)
    try:
        assert client.post(f"http://receiver.test:{port}/hook", content=b"{}").status_code == 200
        with pytest.raises(httpx.ConnectError, match=r"10\.0\.0\.1 is a private address"):
            client.post(f"http://mixed.test:{port}/hook", content=b"{}")
    finally:
        client.close()
    assert len(server.requests) == 1
