"""SIGKILL of ``pacs serve`` in the middle of a transfer loses nothing that was acknowledged.

A C-STORE success means the object is durable and indexed, so after a kill and a restart on
the same data every instance storescu saw acknowledged is there, indexed and byte-exact, and
no index row points at a missing object. Re-sending the whole series then completes it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from testkit import processes
from testkit.dicom_factory import write_ct_series
from tests.conftest import Backend, require_tool, start_archive, stop_archive
from tests.dimse_tools import (
    archive_view,
    dataset_part,
    parse_storescu,
    port_is_closed,
    storescu,
    wait_until,
)

# load-heavy and timing-sensitive tests share one xdist worker: no two of them run at once
pytestmark = pytest.mark.xdist_group("one-at-a-time")

SLICES = 200
KILL_AFTER_ACKS = 10


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """200 slices of 256x256 (about 26 MB), written once for both backends."""
    return write_ct_series(tmp_path_factory.mktemp("crash") / "ct", slices=SLICES, size=256)


def _send_and_kill(port: int, files: list[Path], kill: threading.Event) -> tuple[int, str]:
    """Run storescu; set ``kill`` once it has seen KILL_AFTER_ACKS successes."""
    process = processes.spawn(
        ["storescu", "-v", "-nh", "-aec", "PACS", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines, acks = [], 0
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("I: Received Store Response (Success)"):
                acks += 1
                if acks == KILL_AFTER_ACKS:
                    kill.set()
        return process.wait(timeout=120), "".join(lines)
    finally:
        processes.stop(process)


def test_sigkill_mid_transfer_keeps_every_acknowledged_instance(
    backend: Backend, series: list[Path], tmp_path: Path
) -> None:
    require_tool("storescu")
    log = tmp_path / "serve.log"
    running = start_archive(backend, log)
    try:  # the workers of the killed server, too, if a check fails before they exit
        workers = processes.children_of(running.process.pid)
        assert workers, "pacs serve runs its DICOM workers as child processes"

        kill = threading.Event()
        outcome: list[tuple[int, str]] = []
        sender = threading.Thread(
            target=lambda: outcome.append(_send_and_kill(running.dicom_port, series, kill))
        )
        sender.start()
        try:
            assert kill.wait(timeout=90), "storescu never got its first acknowledgements"
            running.process.kill()  # SIGKILL: no shutdown code runs in the parent
            running.process.wait(timeout=10)
        finally:
            sender.join(timeout=150)
            if running.process.poll() is None:
                running.process.kill()
        result = parse_storescu(*outcome[0])
        acked = result.succeeded
        assert KILL_AFTER_ACKS <= len(acked) < SLICES, (
            f"{len(acked)} acknowledged: not mid-transfer"
        )

        # the workers notice that their parent is gone and exit; nothing keeps the port
        assert wait_until(
            lambda: not any(processes.pid_alive(pid) for pid in workers), timeout=30
        ), [pid for pid in workers if processes.pid_alive(pid)]
        assert port_is_closed(running.dicom_port)
        with socket.create_server(("127.0.0.1", running.dicom_port)):
            pass

        restarted = start_archive(backend, log)
        try:
            with archive_view(backend.settings) as view:
                rows = view.assert_consistent(orphans_allowed=True)
                print(f"{len(acked)} acknowledged before the kill, {len(rows)} indexed after it")
                for path in acked:
                    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                    assert uid in rows, f"acknowledged {path.name} is not indexed after the crash"
                    stored = view.store.get(rows[uid].object_key)
                    assert dataset_part(stored) == dataset_part(path.read_bytes()), path.name
                [series_row] = view.series().values()
                [study_row] = view.studies().values()
                assert series_row.number_of_series_related_instances == len(rows)
                assert study_row.number_of_study_related_instances == len(rows)
                assert study_row.size_bytes == sum(row.size_bytes for row in rows.values())

            # the sender retries everything: what was stored is an idempotent success
            started = time.monotonic()
            retry = storescu(restarted.dicom_port, series, timeout=180)
            assert retry.succeeded == set(series), retry.output[-2000:]
            print(f"re-sent {SLICES} slices in {time.monotonic() - started:.1f} s")
            with archive_view(backend.settings) as view:
                rows = view.assert_consistent(orphans_allowed=True)
                assert len(rows) == SLICES
                indexed = {row.object_key for row in rows.values()}
                leftovers = view.object_keys() - indexed
                # an object written before the kill but never indexed is rewritten (same key) by
                # the re-send; only an interrupted temporary file may remain
                assert all(Path(key).name.endswith(".tmp") for key in leftovers), leftovers
                print(f"temporary files left by the kill: {len(leftovers)}")
                [study_row] = view.studies().values()
                assert study_row.number_of_study_related_instances == SLICES
        finally:
            stop_archive(restarted)
    finally:
        stop_archive(running)
