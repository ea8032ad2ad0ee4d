"""The C-STORE receivers under test, each started fresh for one benchmark run.

* ``pacs``: this archive, embedded default (SQLite + filesystem in a fresh data dir).
* ``pacs-pg-s3``: this archive on a fresh PostgreSQL database and S3 (a moto server process).
* ``orthanc``: Orthanc from Debian, default SQLite index, own temporary JSON configuration.
* ``storescp``: DCMTK ``storescp`` writing files to disk (``--fork`` for parallel runs).

Orthanc and storescp cannot choose a bind address, so they run in a network namespace that has
only loopback (``unshare -n``); their clients are run in the same namespace with ``nsenter``.
Every DCMTK tool and Orthanc get ``TCP_NODELAY=1`` (Debian's DCMTK 3.6.7 leaves Nagle on without).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

from bench.procmon import process_tree
from testkit.net import free_port
from testkit.orthanc import write_orthanc_config

NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
BENCH_AUTH_ENV = {"PACS_AUTH": "none"}
"""The benchmarks call the HTTP API as the local administrator (bound to 127.0.0.1)."""
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class BenchError(RuntimeError):
    """A target could not be started, stopped or checked."""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (status 0 when the server is not reachable)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(check: Any, what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``check()`` until true; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode} while starting")
        if check():
            return
        time.sleep(0.2)
    raise BenchError(f"{what} not ready after {timeout:.0f} s")


def serve_archive(
    data_dir: Path, env: dict[str, str] | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start ``pacs serve`` on ``data_dir`` (``env``: more settings), on free HTTP and DICOM
    ports, logging to ``serve.log`` there; wait for ``/health``. Returns the process, the HTTP
    base URL and the DICOM port."""
    http, dicom = free_port(), free_port()
    settings = {
        "PACS_DATA_DIR": str(data_dir),
        "PACS_HTTP_PORT": str(http),
        "PACS_DICOM_PORT": str(dicom),
        "PACS_SCP_PROCESSES": "1",
        "PACS_LOG_LEVEL": "WARNING",
        **BENCH_AUTH_ENV,
        **(env or {}),
    }
    with (data_dir / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve"],
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    base = f"http://127.0.0.1:{http}"
    try:
        wait_until(lambda: http_get(f"{base}/health", 2)[0] == 200, "pacs serve", process, timeout)
    except BenchError:
        process.kill()
        raise BenchError(f"pacs serve did not start; see {data_dir / 'serve.log'}") from None
    return process, base, dicom


def stop_tree(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM a server we started, wait for it and its descendants, SIGKILL what is left."""
    if process.poll() is not None:
        return
    pids = process_tree(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 5
    for pid in pids[1:]:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Target(ABC):
    """One receiver: start it, point storescu at it, count what it stored, stop it."""

    name: str = ""
    label: str = ""
    ae_title: str = ""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.parallel = False
        self.logs_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.root / "server.log"

    @property
    def pid(self) -> int:
        """Root of the server's process tree."""
        assert self.process is not None
        return self.process.pid

    def client_prefix(self) -> list[str]:
        """Prepended to client commands (e.g. to enter the server's network namespace)."""
        return []

    def popen(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start the server process with its output in ``log_path``."""
        self._log = self.log_path.open("ab")
        return subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root
        )

    def echo(self) -> bool:
        """True when a C-ECHO to the target succeeds."""
        argv = ["echoscu", "-to", "2", "-aec", self.ae_title, "127.0.0.1", str(self.port)]
        done = subprocess.run(
            self.client_prefix() + argv, env=NODELAY_ENV, capture_output=True, check=False
        )
        return done.returncode == 0

    @abstractmethod
    def start(self, parallel: bool) -> None:
        """Start the server on fresh storage and wait until it answers."""

    @abstractmethod
    def count(self) -> int:
        """Instances the server holds now."""

    def stop(self) -> None:
        """Stop the server, keep its log under ``logs_dir``, remove its temporary files."""
        if self.process is not None:
            stop_tree(self.process)
        if self._log is not None:
            self._log.close()
        if self.logs_dir is not None and self.log_path.exists():
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, self.logs_dir / f"{self.root.name}.log")
        shutil.rmtree(self.root, ignore_errors=True)

    def problems(self) -> list[str]:
        """Error lines the server logged."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        marks = ("ERROR", "Traceback", "CRITICAL")
        return [line for line in lines if any(m in line for m in marks)]

    def __enter__(self) -> Target:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.start(self.parallel)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- this archive


class PacsTarget(Target):
    """``pacs serve`` on the embedded default: SQLite + filesystem in a fresh data dir."""

    name = "pacs"
    label = "pacs (SQLite + filesystem)"
    ae_title = "PACS"

    def __init__(self, workdir: Path, scp_processes: int | None = None) -> None:
        super().__init__(workdir)
        self.scp_processes = scp_processes
        self.http_port = 0
        self.extra_env: dict[str, str] = {}
        self.user_env: dict[str, str] = {}

    def command(self) -> list[str]:
        """The ``pacs serve`` command line."""
        exe = Path(sys.executable).parent / "pacs"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "pacs.cli"]
        argv += ["serve", "--data-dir", str(self.root / "var")]
        argv += ["--dicom-port", str(self.port), "--http-port", str(self.http_port)]
        if self.scp_processes:
            argv += ["--scp-processes", str(self.scp_processes)]
        return argv

    def start(self, parallel: bool) -> None:
        self.prepare()
        self.port, self.http_port = free_port(), free_port()
        env = {**NODELAY_ENV, **BENCH_AUTH_ENV, **self.extra_env, **self.user_env}
        self.process = self.popen(self.command(), env)
        url = f"http://127.0.0.1:{self.http_port}/health"
        wait_until(lambda: http_get(url, 2)[0] == 200, "pacs serve", self.process, 90)

    def prepare(self) -> None:
        """Backend set-up before the server starts (none for the embedded default)."""

    def count(self) -> int:
        total, offset = 0, 0
        while True:
            url = f"http://127.0.0.1:{self.http_port}/api/studies?limit=1000&offset={offset}"
            status, body = http_get(url, 30)
            if status != 200:
                raise BenchError(f"GET /api/studies answered {status}: {body[:200]!r}")
            page = json.loads(body)
            total += sum(int(item["number_of_instances"]) for item in page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= int(page["total"]):
                return total


class PacsPostgresS3Target(PacsTarget):
    """``pacs serve`` on a fresh PostgreSQL database and an S3 bucket in a moto server."""

    name = "pacs-pg-s3"
    label = "pacs (PostgreSQL + S3/moto)"

    def __init__(self, workdir: Path, scp_processes: int | None = None) -> None:
        super().__init__(workdir, scp_processes)
        self.admin_url = os.environ.get("PACS_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        self.database = f"pacs_bench_{uuid.uuid4().hex[:10]}"
        self.moto: subprocess.Popen[bytes] | None = None
        self._admin: Any = None

    def prepare(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = make_url(self.admin_url)
        self._admin = create_engine(admin, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        db_url = admin.set(database=self.database).render_as_string(hide_password=False)

        moto_port = free_port()
        moto_exe = Path(sys.executable).parent / "moto_server"
        moto_log = (self.root / "moto.log").open("ab")
        self.moto = subprocess.Popen(
            [str(moto_exe), "-H", "127.0.0.1", "-p", str(moto_port)],
            stdout=moto_log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        moto_log.close()
        url = f"http://127.0.0.1:{moto_port}/"
        wait_until(lambda: http_get(url, 2)[0] != 0, "moto_server", self.moto, 60)
        self.extra_env = {
            "PACS_DATABASE_URL": db_url,
            "PACS_STORAGE_URL": f"s3://pacs-bench-{uuid.uuid4().hex[:8]}/archive",
            "PACS_S3_ENDPOINT": f"127.0.0.1:{moto_port}",
            "PACS_S3_ACCESS_KEY": "testing",
            "PACS_S3_SECRET_KEY": "testing",
            "PACS_S3_REGION": "us-east-1",
        }

    def stop(self) -> None:
        try:
            if self.process is not None:
                stop_tree(self.process)
            if self.moto is not None:
                stop_tree(self.moto)
            if self._admin is not None:
                from sqlalchemy import text

                with self._admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
                self._admin.dispose()
        finally:
            super().stop()


# ---------------------------------------------------------------- peers in a network namespace


class NamespacedTarget(Target):
    """A server started inside ``unshare -n`` with only loopback up; clients join via nsenter."""

    def client_prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n"]

    def popen_in_netns(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """``unshare -n`` then exec ``argv``: the returned process is the server itself."""
        script = 'ip link set lo up && exec "$@"'
        return self.popen(["unshare", "-n", "sh", "-c", script, "sh", *argv], NODELAY_ENV)

    def wait_ready(self) -> None:
        """Wait until C-ECHO succeeds inside the namespace."""
        assert self.process is not None
        wait_until(self.echo, self.label, self.process, 60)


class OrthancTarget(NamespacedTarget):
    """Orthanc from Debian with its default SQLite index and a temporary JSON configuration."""

    name = "orthanc"
    label = "Orthanc (SQLite)"
    ae_title = "ORTHANC"
    http_port = 8042

    def start(self, parallel: bool) -> None:
        self.port = 4242
        path = write_orthanc_config(self.root, "bench", self.ae_title, self.port, self.http_port)
        self.process = self.popen_in_netns(["Orthanc", str(path)])
        self.wait_ready()

    def count(self) -> int:
        argv = ["curl", "-sf", f"http://127.0.0.1:{self.http_port}/statistics"]
        done = subprocess.run(self.client_prefix() + argv, capture_output=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"Orthanc /statistics failed: {done.stderr.decode(errors='replace')}")
        return int(json.loads(done.stdout)["CountInstances"])

    def problems(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith("E")]


class StorescpTarget(NamespacedTarget):
    """DCMTK ``storescp`` writing each received object to a file (``--fork`` when parallel)."""

    name = "storescp"
    label = "DCMTK storescp (files)"
    ae_title = "STORESCP"

    def start(self, parallel: bool) -> None:
        self.port = 11112
        out = self.root / "out"
        out.mkdir()
        argv = ["storescp", "-aet", self.ae_title, "-od", str(out)]
        if parallel:
            argv.append("--fork")
        self.process = self.popen_in_netns([*argv, str(self.port)])
        self.wait_ready()

    def count(self) -> int:
        return sum(1 for p in (self.root / "out").rglob("*") if p.is_file())

    def problems(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(("E:", "F:"))]


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (PacsTarget, PacsPostgresS3Target, OrthancTarget, StorescpTarget)
}
