"""``pacs serve`` start-up: the banner is printed only once the node is ready, the console is
quiet, and two DICOM workers both come up (forked from one fork server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import free_port

BANNER = "DICOM: AE title"


def test_banner_only_when_ready_and_quiet_console(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env |= {
        "PACS_DATA_DIR": str(tmp_path / "var"),
        "PACS_DICOM_PORT": str(dicom_port),
        "PACS_HTTP_PORT": str(http_port),
        "PACS_SCP_PROCESSES": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, f"pacs serve exited before its banner:\n{''.join(printed)}"
            printed.append(line)
            if line.startswith(BANNER):
                break
        ready = httpx.get(f"http://127.0.0.1:{http_port}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["dicom"] == "ok"
        assert "ready in" in printed[-1]
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        for _ in range(2):  # one association per worker
            assoc = ae.associate("127.0.0.1", dicom_port, ae_title="PACS")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # third-party INFO lines (alembic's migrations, uvicorn's start-up) stay off the console
    noise = [line for line in printed if "alembic" in line or "Uvicorn running" in line]
    assert not noise, printed
    # the first start (PACS_AUTH=local) created the administrator and showed its password once
    admin = [line for line in printed if line.startswith("First start: created the admin")]
    assert len(admin) == 1, printed


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_failed_start_leaves_no_process_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env |= {
        "PACS_DATA_DIR": str(data_dir),
        "PACS_DICOM_PORT": str(free_port()),
        "PACS_HTTP_PORT": str(free_port()),
        "PACS_SCP_PROCESSES": "2",
        "PACS_RULES_FILE": str(tmp_path / "no-such-rules.yaml"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "error:" in done.stderr and "no-such-rules.yaml" in done.stderr
    deadline = time.monotonic() + 10  # workers see their control socket close and exit
    while processes_with(f"PACS_DATA_DIR={data_dir}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(f"PACS_DATA_DIR={data_dir}") == []
