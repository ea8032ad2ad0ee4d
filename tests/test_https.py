"""HTTPS served by ``pacs serve`` itself (uvicorn with the configured certificate, TLS 1.2+),
forwarded headers of a trusted proxy, and the start-up checks of the hardened defaults."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from pacs.config import KnownAE, Settings
from pacs.serve import http_config, warn_hostless_aes
from testkit import processes
from testkit.tls import CertificateAuthority
from tests.conftest import free_port, make_backend
from viewer_api.app import create_app


def test_pacs_serve_speaks_https_with_its_certificate(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "Regional CA")
    server = ca.issue("pacs.example", server=True)
    backend = make_backend(request, tmp_path, "sqlite", "file")
    port = free_port()
    env = {
        **os.environ,
        **backend.env,
        "PACS_DICOM_PORT": str(free_port()),
        "PACS_HTTP_PORT": str(port),
        "PACS_SCP_PROCESSES": "1",
        "PACS_TLS_CERTIFICATE": str(server.certificate),
        "PACS_TLS_KEY": str(server.key),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = processes.spawn(
            [sys.executable, "-m", "pacs.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"https://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 60
        answer = None
        trust = ssl.create_default_context(cafile=str(ca.path))
        while answer is None and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                answer = httpx.get(url, verify=trust, timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, log.read_text()
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):  # a client that does not trust the CA
            httpx.get(url, timeout=5)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert f"https://127.0.0.1:{port}/" in log.read_text()
    finally:
        processes.stop(process)


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    """The app on real uvicorn with ``http_config`` (plain HTTP, as behind the proxy)."""
    backend = make_backend(request, tmp_path, "sqlite", "file")
    settings = backend.with_settings(http_port=free_port(), forwarded_allow_ips="127.0.0.1")
    app = create_app(settings)
    server = uvicorn.Server(http_config(settings, app))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield settings.http_port
    server.should_exit = True
    thread.join(10)
    app.state.engine.dispose()


def test_trusted_proxy_headers_give_the_clients_scheme(served: int) -> None:
    url = f"http://127.0.0.1:{served}/health"
    assert "Strict-Transport-Security" not in httpx.get(url).headers
    proxied = httpx.get(url, headers={"X-Forwarded-Proto": "https"})
    assert proxied.headers["Strict-Transport-Security"].startswith("max-age=")


def test_http_config_pins_tls_1_2_and_the_trusted_proxies(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = CertificateAuthority(tmp_path / "pki").issue("pacs.example", server=True)
    backend = make_backend(request, tmp_path, "sqlite", "file")
    settings = backend.with_settings(
        tls_certificate=server.certificate, tls_key=server.key, forwarded_allow_ips="10.9.9.9"
    )
    app = create_app(settings)
    config = http_config(settings, app)
    config.load()
    assert config.ssl is not None
    assert config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.proxy_headers and config.forwarded_allow_ips == "10.9.9.9"
    app.state.engine.dispose()


def test_hostless_allow_list_entries_are_warned_or_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(allowed_aes="CT1@10.1.2.3,MR2,US3=Clinic")
    assert settings.allowed_aes[1] == KnownAE("MR2", "*", "")
    with caplog.at_level(logging.WARNING, logger="pacs.serve"):
        warn_hostless_aes(settings)
    [record] = caplog.records
    assert "MR2, US3" in record.getMessage() and "CT1" not in record.getMessage()
    with pytest.raises(SystemExit, match="MR2, US3"):
        warn_hostless_aes(settings.model_copy(update={"refuse_hostless_aes": True}))
    caplog.clear()
    warn_hostless_aes(Settings(allowed_aes="CT1@10.1.2.3"))
    assert caplog.records == []


def test_s3_without_credentials_fails_at_start_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PACS_S3_ACCESS_KEY and PACS_S3_SECRET_KEY"):
        Settings.load(storage_url="s3://pacs/archive")
    defaults = Settings()
    assert defaults.s3_access_key == "" and defaults.s3_secret_key == ""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env |= {"PACS_STORAGE_URL": "s3://pacs/archive", "PACS_DATA_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "PACS_S3_ACCESS_KEY and PACS_S3_SECRET_KEY" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_tls_certificate_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="tls_certificate and tls_key"):
        Settings.load(tls_certificate="/srv/cert.pem")
    with pytest.raises(ValueError, match="dicom_tls_certificate and dicom_tls_key"):
        Settings.load(dicom_tls_key="/srv/key.pem")
    with pytest.raises(ValueError, match="needs dicom_tls_client_ca"):
        Settings.load(dicom_tls_match_ae=True)
