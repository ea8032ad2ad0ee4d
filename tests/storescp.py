"""DCMTK storescp as a C-STORE destination for tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from testkit import processes
from testkit.orthanc import wait_for_port


@contextlib.contextmanager
def running_storescp(
    binary: str, folder: Path, port: int, options: Sequence[str] = ()
) -> Iterator[Path]:
    """storescp (AE STORESCP; uncompressed syntaxes only, its default) writing what it receives
    bit-preserving into ``folder/received``; it listens on all interfaces of ``port``, since
    it cannot bind one address; ``options`` are added (e.g. ``+tls``). Yields the folder of
    received files."""
    out = folder / "received"
    out.mkdir(parents=True)
    with (folder / "storescp.log").open("wb") as log:
        process = processes.spawn(
            [binary, "-aet", "STORESCP", "+B", *options, "-od", str(out), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            wait_for_port(port, process)
            yield out
        finally:
            processes.stop(process)
