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
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests import processes
from tests.conftest import ROOT, require

FAILED_START_UP = """
import json, os, time
from tests import conftest, processes

def test_start_up_times_out(request, tmp_path, monkeypatch):
    backend = conftest.make_backend(request, tmp_path, "postgresql", "file")
    real_wait = conftest._wait_until_healthy
    seen = {"database_url": backend.env["PACS_DATABASE_URL"]}

    def wait_for_workers_then_time_out(archive, timeout):
        # once pacs serve has started its DICOM workers, a (real) time-out of 0.5 s
        seen["server"] = archive.process.pid
        for _ in range(600):
            if children := processes.children_of(archive.process.pid):
                seen["workers"] = children
                break
            time.sleep(0.1)
        real_wait(archive, 0.5)

    monkeypatch.setattr(conftest, "_wait_until_healthy", wait_for_workers_then_time_out)
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


def _run_pytest(folder: Path, source: str, marker: str) -> tuple[int, str, dict]:
    """Run ``source`` as a test file in a pytest with this suite's fixtures and hooks."""
    test_file = folder / "test_inner.py"
    test_file.write_text(source)
    out = folder / "inner.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        INNER_OUT=str(out),
        PACS_INNER_MARKER=marker,  # inherited by everything the inner run starts
    )
    args = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    process = processes.spawn(
        [*args, "-q", str(test_file)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        processes.stop(process)
    return process.returncode, output, json.loads(out.read_text()) if out.exists() else {}


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


def test_failed_start_up_leaves_no_process_and_no_database(tmp_path: Path) -> None:
    admin_url = os.environ.get("PACS_TEST_DATABASE_URL", "")
    require(bool(admin_url), "PACS_TEST_DATABASE_URL is not set")
    marker = f"inner-{uuid.uuid4().hex}"
    code, output, seen = _run_pytest(tmp_path, FAILED_START_UP, marker)
    assert code == 1 and "1 failed" in output, output[-3000:]
    assert "pacs serve did not become healthy in 0.5 s" in output, output[-3000:]
    assert seen.get("workers"), f"pacs serve never started its workers:\n{output[-3000:]}"
    for pid in [seen["server"], *seen["workers"]]:
        assert not processes.pid_alive(pid), pid
    assert _processes_with(marker) == []
    database = seen["database_url"].rsplit("/", 1)[1]
    assert not _database_exists(admin_url, database), database


def test_a_process_left_running_fails_the_run(tmp_path: Path) -> None:
    marker = f"inner-{uuid.uuid4().hex}"
    code, output, seen = _run_pytest(tmp_path, LEFT_RUNNING, marker)
    assert code == 1, output[-3000:]
    assert "the tests left 1 process(es) running" in output, output[-3000:]
    assert f"pid {seen['sleeper']}: sleep 300" in output, output[-3000:]
    assert not processes.pid_alive(seen["sleeper"])
    assert _processes_with(marker) == []


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
