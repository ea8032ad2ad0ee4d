"""The suite cleans up after itself: a failed start-up leaves no process and no database, and
a process left running fails the run.

Each case runs a small test file in a pytest of its own (with this suite's fixtures) and then
looks at what is left on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from testkit import processes
from tests.conftest import ROOT, require

FAILED_START_UP = """
import json, os, time
import pytest
from testkit import processes
from tests import conftest

def test_start_up_times_out(request, tmp_path, monkeypatch):
    backend = conftest.make_backend(request, tmp_path, "postgresql", "file")
    real_wait = conftest._wait_until_healthy
    seen = {"database_url": backend.env["PACS_DATABASE_URL"]}

    def wait_for_workers_then_fail(archive, timeout):
        # once pacs serve has started its DICOM workers, the start-up fails
        seen["server"] = archive.process.pid
        for _ in range(600):
            if children := processes.children_of(archive.process.pid):
                seen["workers"] = children
                break
            time.sleep(0.1)
        END_OF_START_UP

    monkeypatch.setattr(conftest, "_wait_until_healthy", wait_for_workers_then_fail)
    try:
        conftest.start_archive(backend, tmp_path / "serve.log", PACS_SCP_PROCESSES="2")
    finally:
        with open(os.environ["INNER_OUT"], "w") as out:
            json.dump(seen, out)
"""

LEFT_RUNNING = """
import json, os, subprocess

def test_forgets_its_process():
    sleeper = subprocess.Popen(["sleep", "300"])
    with open(os.environ["INNER_OUT"], "w") as out:
        json.dump({"sleeper": sleeper.pid}, out)
"""


TERMINATED_MID_TEST = """
import json, os, time
import pytest
from tests import conftest

@pytest.fixture
def archive(request, tmp_path):
    backend = conftest.make_backend(request, tmp_path, "postgresql", "file")
    running = conftest.start_archive(backend, tmp_path / "serve.log")
    yield running
    conftest.stop_archive(running)

def test_runs_until_terminated(archive):
    seen = {"server": archive.process.pid, "database_url": archive.env["PACS_DATABASE_URL"]}
    with open(os.environ["INNER_OUT"], "w") as out:
        json.dump(seen, out)
    time.sleep(300)
"""


def _start_pytest(folder: Path, source: str, marker: str) -> subprocess.Popen[str]:
    """Start a pytest with this suite's fixtures and hooks on ``source`` as a test file; it
    writes what it wants checked to ``folder/inner.json``."""
    test_file = folder / "test_inner.py"
    test_file.write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        INNER_OUT=str(folder / "inner.json"),
        PACS_INNER_MARKER=marker,  # inherited by everything the inner run starts
    )
    args = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    return processes.spawn(
        [*args, "-q", str(test_file)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_pytest(folder: Path, source: str, marker: str) -> tuple[int, str, dict]:
    """Run :func:`_start_pytest` to its end: (exit status, output, what it wrote)."""
    process = _start_pytest(folder, source, marker)
    out = folder / "inner.json"
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        processes.stop(process)
    return process.returncode, output, json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture
def marker() -> Iterator[str]:
    """A mark in the environment of everything the inner run starts; afterwards no process
    that carries it may be alive (any that is gets killed, and the test errors)."""
    value = f"inner-{uuid.uuid4().hex}"
    yield value
    left = {pid: processes.command_line(pid) for pid in _processes_with(value)}
    processes.kill(list(left))
    assert left == {}, "the inner run left processes behind"


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if processes.pid_alive(pid)]


def _database_exists(admin_url: str, name: str) -> bool:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT 1 FROM pg_database WHERE datname = :name")
            return conn.scalar(query, {"name": name}) is not None
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("end", "message"),
    [
        ("real_wait(archive, 0.5)", "pacs serve did not become healthy in 0.5 s"),
        # what pytest-timeout raises when a start-up overruns the test's time
        ('pytest.fail("Timeout (>300.0s) from pytest-timeout.")', "from pytest-timeout"),
    ],
    ids=["health-time-out", "test-time-out"],
)
def test_failed_start_up_leaves_no_process_and_no_database(
    tmp_path: Path, marker: str, end: str, message: str
) -> None:
    admin_url = os.environ.get("PACS_TEST_DATABASE_URL", "")
    require(bool(admin_url), "PACS_TEST_DATABASE_URL is not set")
    source = FAILED_START_UP.replace("END_OF_START_UP", end)
    code, output, seen = _run_pytest(tmp_path, source, marker)
    assert code == 1 and "1 failed" in output, output[-3000:]
    assert message in output, output[-3000:]
    assert "process(es) running" not in output, output[-3000:]  # not left to the safety net
    assert seen.get("workers"), f"pacs serve never started its workers:\n{output[-3000:]}"
    assert _processes_with(marker) == []
    for pid in [seen["server"], *seen["workers"]]:
        assert not processes.pid_alive(pid), pid
    database = seen["database_url"].rsplit("/", 1)[1]
    assert not _database_exists(admin_url, database), database


def test_a_process_left_running_fails_the_run(tmp_path: Path, marker: str) -> None:
    code, output, seen = _run_pytest(tmp_path, LEFT_RUNNING, marker)
    assert code == 1, output[-3000:]
    assert "the tests left 1 process(es) running" in output, output[-3000:]
    assert f"pid {seen['sleeper']}: sleep 300" in output, output[-3000:]
    assert _processes_with(marker) == []
    assert not processes.pid_alive(seen["sleeper"])


def test_sigterm_mid_test_stops_the_archive_and_drops_its_database(
    tmp_path: Path, marker: str
) -> None:
    """A CI time-out's SIGTERM reaches pytest only (the archive has a session of its own):
    pytest tears its fixtures down as on Ctrl-C."""
    admin_url = os.environ.get("PACS_TEST_DATABASE_URL", "")
    require(bool(admin_url), "PACS_TEST_DATABASE_URL is not set")
    process = _start_pytest(tmp_path, TERMINATED_MID_TEST, marker)
    out = tmp_path / "inner.json"
    try:
        deadline = time.monotonic() + 180
        while not out.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists(), "the inner test never got its archive running"
        seen = json.loads(out.read_text())
        process.terminate()
        output, _ = process.communicate(timeout=120)
    finally:
        processes.stop(process)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert _processes_with(marker) == []
    assert not processes.pid_alive(seen["server"])
    database = seen["database_url"].rsplit("/", 1)[1]
    assert not _database_exists(admin_url, database), database


@pytest.mark.parametrize("exits", [False, True])
def test_stop_ends_the_whole_process_group(exits: bool) -> None:
    """The leader's children go too, whether the leader is still running or already gone."""
    script = "sleep 300 & echo $!; " + ("exit 0" if exits else "wait")
    shell = processes.spawn(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None
    child = int(shell.stdout.readline())
    if exits:
        shell.wait(10)
    assert processes.pid_alive(child)
    processes.stop(shell, timeout=5)
    assert not processes.pid_alive(child)
