"""Shared fixtures: both databases, both object stores, a running archive, DICOM tools.

PostgreSQL comes from ``PACS_TEST_DATABASE_URL`` (each test gets its own database made from a
migrated template); S3 is moto's real HTTP server on 127.0.0.1; the real CT and reference
objects come from ``PACS_TEST_DATA_DIR`` (default ``../shared/data``). Under ``CI=true`` a
missing service, tool or data file fails the test instead of skipping it. Every process a
test starts goes through :mod:`testkit.processes`; the run fails if one outlives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from testkit import processes

ROOT = Path(__file__).resolve().parents[1]
# relative to the project root; README "Test data" says what it holds and where it comes from
TEST_DATA_DIR = (ROOT / os.environ.get("PACS_TEST_DATA_DIR", "../shared/data")).resolve()
IN_CI = os.environ.get("CI", "").lower() == "true"
os.environ.setdefault("TCP_NODELAY", "1")  # DCMTK 3.6.7 leaves Nagle on without it


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail under CI=true, when a service or tool is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def data_file(*parts: str) -> Path:
    """A file or folder under ``PACS_TEST_DATA_DIR``; skips the test (fails it under CI=true)
    when it is missing."""
    path = TEST_DATA_DIR.joinpath(*parts)
    require(
        path.exists(),
        f"test data missing: {path} (set PACS_TEST_DATA_DIR; see README.md, Test data)",
    )
    return path


def require_tool(name: str) -> str:
    """Path of a command-line tool (DCMTK, dicom3tools, Orthanc)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    return str(path)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database; yields its admin URL."""
    url = os.environ.get("PACS_TEST_DATABASE_URL", "")
    require(bool(url), "PACS_TEST_DATABASE_URL is not set")
    admin = make_url(url)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        require(False, f"PostgreSQL at {admin.render_as_string()} unreachable: {exc}")
    template = f"pacs_tmpl_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{template}"'))
    try:
        tmpl_url = admin.set(database=template).render_as_string(hide_password=False)
        tmpl_engine = create_index_engine(Settings(database_url=tmpl_url))
        upgrade(tmpl_engine)
        tmpl_engine.dispose()
        yield tmpl_url
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
        engine.dispose()


def _new_postgres_database(template_url: str) -> tuple[str, Any]:
    url = make_url(template_url)
    name = f"pacs_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


# ---------------------------------------------------------------- S3 (moto server)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto's server mode) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


# ---------------------------------------------------------------- settings per backend


@dataclass
class Backend:
    """One database + object store combination for a test."""

    database: str  # "sqlite" | "postgresql"
    storage: str  # "file" | "s3"
    settings: Settings
    env: dict[str, str] = field(default_factory=dict)

    def with_settings(self, **overrides: Any) -> Settings:
        """These settings with some fields changed, parsed as the environment's values are."""
        return Settings(**{**self.settings.model_dump(), **overrides})


def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, storage: str
) -> Backend:
    """A fresh backend; its PostgreSQL database (if any) is dropped when ``request``'s fixture
    or test ends, however it ends."""
    # the functional tests act as the local administrator (PACS_AUTH=none, bound to 127.0.0.1);
    # the authentication and access tests present real tokens (testkit/auth.py)
    env = {
        "PACS_DATA_DIR": str(tmp_path / "var"),
        "PACS_LOG_LEVEL": "WARNING",
        "PACS_AUTH": "none",
    }
    if database == "postgresql":
        template = request.getfixturevalue("postgres_template")
        url, drop = _new_postgres_database(template)
        request.addfinalizer(drop)
        env["PACS_DATABASE_URL"] = url
    if storage == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        env.update(
            PACS_STORAGE_URL=f"s3://pacs-{uuid.uuid4().hex[:12]}/archive",
            PACS_S3_ENDPOINT=endpoint,
            PACS_S3_ACCESS_KEY="testing",
            PACS_S3_SECRET_KEY="testing",
            PACS_S3_REGION="us-east-1",
        )
    settings = Settings(**{k.removeprefix("PACS_").lower(): v for k, v in env.items()})
    if database == "sqlite":
        engine = create_index_engine(settings)
        upgrade(engine)
        engine.dispose()
    return Backend(database, storage, settings, env)


@pytest.fixture(params=["sqlite-file", "postgresql-s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The two deployments: embedded (SQLite + filesystem) and production (PostgreSQL + S3)."""
    database, storage = request.param.split("-")
    return make_backend(request, tmp_path, database, storage)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each database, with the filesystem store."""
    return make_backend(request, tmp_path, request.param, "file")


@pytest.fixture(params=["file", "s3"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each object store, with SQLite."""
    return make_backend(request, tmp_path, "sqlite", request.param)


# ---------------------------------------------------------------- a running archive


@dataclass
class RunningArchive:
    """A ``pacs serve`` subprocess and how to reach it."""

    process: subprocess.Popen[bytes]
    backend: Backend
    dicom_port: int
    http_port: int
    env: dict[str, str]
    log_path: Path

    @property
    def http(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")


def start_archive(
    backend: Backend, log_path: Path, timeout: float = 60, **env_overrides: str
) -> RunningArchive:
    """Start ``pacs serve`` on free ports and wait up to ``timeout`` s until ``/health`` is
    200; if it does not get there, stop it (and its children) before raising."""
    dicom_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        **backend.env,
        "PACS_DICOM_PORT": str(dicom_port),
        "PACS_HTTP_PORT": str(http_port),
        "PACS_SCP_PROCESSES": "1",  # tests of several SCP processes ask for them
        **env_overrides,
    }
    with log_path.open("ab") as log_file:
        process = processes.spawn(
            [sys.executable, "-m", "pacs.cli", "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
        )
    archive = RunningArchive(process, backend, dicom_port, http_port, env, log_path)
    try:
        _wait_until_healthy(archive, timeout)
    except BaseException:
        processes.stop(process)
        raise
    return archive


def _wait_until_healthy(archive: RunningArchive, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if archive.process.poll() is not None:
            raise RuntimeError(f"pacs serve exited {archive.process.returncode}:\n{archive.log()}")
        try:
            if httpx.get(f"{archive.http}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"pacs serve did not become healthy in {timeout} s:\n{archive.log()}")


def stop_archive(archive: RunningArchive) -> None:
    """Stop the server and its DICOM workers (SIGTERM, then SIGKILL to its process group)."""
    processes.stop(archive.process, timeout=15)


@pytest.fixture
def archive(backend: Backend, tmp_path: Path) -> Iterator[RunningArchive]:
    """A running archive on each backend (one DICOM process: the fastest start)."""
    running = start_archive(backend, tmp_path / "serve.log")
    try:
        yield running
    finally:
        stop_archive(running)


# ---------------------------------------------------------------- nothing outlives the run


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_run() -> Iterator[None]:
    """Fail the run if a process it started is still alive once every other fixture is torn
    down (then end it, so that nothing keeps a port or a database)."""
    yield
    left = processes.leftover_children()
    processes.stop_all()
    if left:
        processes.kill(list(left))
        lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left.items())
        pytest.fail(f"the tests left {len(left)} process(es) running:\n{lines}", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout) ends the run like Ctrl-C: fixtures are torn down, processes
    stopped."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
