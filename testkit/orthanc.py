"""Orthanc from Debian as a peer for tests and benchmarks: its temporary configuration."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testkit import processes


def write_orthanc_config(
    folder: Path,
    name: str,
    ae_title: str,
    dicom_port: int,
    http_port: int,
    modalities: dict[str, tuple[str, str, int]] | None = None,
) -> Path:
    """Write an Orthanc JSON configuration under ``folder`` and return its path.

    Storage and index live in ``folder/storage``; no plugins, no authentication, any calling
    AE may echo and store, the called AE title is not checked; ``modalities`` (name ->
    (AE title, host, port)) are the peers Orthanc may send to (C-MOVE destinations).
    """
    storage = folder / "storage"
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
        "DicomModalities": {key: list(peer) for key, peer in (modalities or {}).items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


@contextlib.contextmanager
def running_orthanc(
    binary: str,
    folder: Path,
    dicom_port: int,
    http_port: int,
    modalities: dict[str, tuple[str, str, int]] | None = None,
) -> Iterator[str]:
    """Run Orthanc (AE title ORTHANC) from a fresh configuration; yield its HTTP base URL."""
    path = write_orthanc_config(folder, "test", "ORTHANC", dicom_port, http_port, modalities)
    with (folder / "orthanc.log").open("wb") as log:
        process = processes.spawn(
            [binary, str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            wait_for_port(dicom_port, process, timeout=60)
            wait_for_port(http_port, process, timeout=60)
            yield f"http://127.0.0.1:{http_port}"
        finally:
            processes.stop(process)
