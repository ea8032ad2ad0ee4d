"""Multi-process DICOM server.

One listening socket in the parent (two with DICOM TLS: the TLS port's connections are marked
and the worker runs the TLS handshake); each accepted connection is handed (file descriptor
passing over a Unix socket pair) to the ready worker process with the fewest open associations.
Every worker runs a pynetdicom AE with its own GIL, database pool and object-store client, so
parallel associations use every core. A worker that dies is restarted; workers exit when the
parent goes away.

Workers are forked from a ``forkserver`` that imported the worker code once: N workers cost one
import (about 1.6 s of CPU) instead of N, which is most of a node's start-up time; the fork
server is a fresh interpreter, so no lock or thread of this process is inherited.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import select
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from pacs.config import Settings

log = logging.getLogger(__name__)

_READY = b"r"
_CLOSED = b"c"


@dataclass
class _Worker:
    index: int
    process: Any
    control: socket.socket
    active: int = 0
    ready: bool = False
    buffer: bytes = field(default=b"", repr=False)


class DicomServer:
    """Listens on (host, dicom_port) and feeds connections to ``scp_process_count`` workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listener = socket.create_server(
            (settings.host, settings.dicom_port), backlog=256, reuse_port=False
        )
        self.port = self.listener.getsockname()[1]
        self.tls_listener: socket.socket | None = None
        self.tls_port: int | None = None
        if settings.dicom_tls:
            self.tls_listener = socket.create_server(
                (settings.host, settings.dicom_tls_port), backlog=256, reuse_port=False
            )
            self.tls_port = self.tls_listener.getsockname()[1]
        self._context = mp.get_context("forkserver")
        self._context.set_forkserver_preload([__name__, "pacs.dimse.worker"])
        self._workers: list[_Worker] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spawner: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """True once a worker has its AE running: connections go to ready workers first."""
        return any(w.ready for w in self._workers)

    def spawn_workers(self) -> None:
        """Start the worker processes from a thread and return at once: they load while the
        caller goes on with its start-up (migrations); they get no connection before ``start``."""
        if self._spawner is None:
            self._spawner = threading.Thread(
                target=self._spawn_all, name="dicom-spawn", daemon=True
            )
            self._spawner.start()

    def start(self) -> None:
        """Start the workers (unless ``spawn_workers`` did) and the dispatch thread."""
        self.spawn_workers()
        assert self._spawner is not None
        self._spawner.join()
        self._thread = threading.Thread(target=self._run, name="dicom-dispatch", daemon=True)
        self._thread.start()
        log.info(
            "DICOM %s listening on %s:%d%s with %d processes",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            f" and TLS port {self.tls_port}" if self.tls_port else "",
            len(self._workers),
        )

    def stop(self) -> None:
        """Stop accepting, close the workers' control sockets (they exit) and join them."""
        self._stop.set()
        if self._spawner:
            self._spawner.join()
        if self._thread:
            self._thread.join(timeout=5)
        self.listener.close()
        if self.tls_listener is not None:
            self.tls_listener.close()
        for worker in self._workers:
            worker.control.close()
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()

    def _spawn_all(self) -> None:
        self._workers = [self._spawn(i) for i in range(self.settings.scp_process_count)]

    def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings.model_dump(mode="json"), child),
            name=f"pacs-scp-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        return _Worker(index, process, parent)

    def _run(self) -> None:
        listeners = {self.listener: False}
        if self.tls_listener is not None:
            listeners[self.tls_listener] = True
        for listener in listeners:
            listener.setblocking(False)
        while not self._stop.is_set():
            controls = {w.control: w for w in self._workers}
            readable, _, _ = select.select([*listeners, *controls], [], [], 0.5)
            for sock in readable:
                if sock in listeners:
                    self._accept(sock, tls=listeners[sock])
                else:
                    self._read_control(controls[sock])
            self._restart_dead()

    def _accept(self, listener: socket.socket, tls: bool) -> None:
        try:
            conn, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            candidates = [w for w in self._workers if w.ready] or self._workers
            worker = min(candidates, key=lambda w: w.active)
            payload = f"{address[0]}|{address[1]}|{'tls' if tls else ''}".encode()
            try:
                socket.send_fds(worker.control, [payload], [conn.fileno()])
                worker.active += 1
            except OSError as exc:
                log.error("cannot hand connection to worker %d: %s", worker.index, exc)

    def _read_control(self, worker: _Worker) -> None:
        try:
            data = worker.control.recv(4096)
        except OSError:
            data = b""
        if not data:
            worker.ready = False
            return
        for byte in data:
            if byte == _READY[0]:
                worker.ready = True
            elif byte == _CLOSED[0]:
                worker.active = max(0, worker.active - 1)

    def _restart_dead(self) -> None:
        for i, worker in enumerate(self._workers):
            if not worker.process.is_alive() and not self._stop.is_set():
                log.error(
                    "DICOM worker %d exited (code %s); restarting",
                    worker.index,
                    worker.process.exitcode,
                )
                worker.control.close()
                self._workers[i] = self._spawn(worker.index)


def _worker_main(settings_data: dict[str, Any], control: socket.socket) -> None:
    """Entry point of a worker process: serve connections handed over on ``control``."""
    from pacs.dimse.worker import serve_connections

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; its exit stops us
    settings = Settings(**settings_data)
    serve_connections(settings, control)
    os._exit(0)
