"""``pacs serve`` / ``pacs scp``: migrations, the DICOM server and the HTTP API in one node.

Start-up order, chosen so that the slow parts overlap: the DICOM workers are forked first (they
load pydicom and pynetdicom and build their AEs) while this process applies the migrations and
loads the HTTP app; connections are dispatched only once the migrations are applied. The
banner is printed when the node is ready (``/health/ready`` answers 200), not before.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from pacs.config import Settings
from pacs.dimse.server import DicomServer
from pacs.logging import configure_logging

if TYPE_CHECKING:
    from pacs.jobs.background import Background

log = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.05


def run_serve(settings: Settings, http: bool) -> None:
    """Apply migrations, start the DICOM server, then the HTTP API (or wait) until a signal.
    Whatever was started is stopped on the way out, start-up failures included."""
    started = time.monotonic()
    configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as running:
        dicom = DicomServer(settings)
        dicom.spawn_workers()
        running.callback(dicom.stop)
        _migrate(settings)
        background = _background(settings, worker=http and settings.serve_worker)
        dicom.start()
        background.start()  # sweeper, job reaper, webhooks (and a worker)
        running.callback(background.stop)
        banner = f"DICOM: AE title {settings.ae_title} on {settings.host}:{dicom.port}"
        if settings.hl7_port:
            running.callback(_start_hl7_listener(settings))
        running.callback(_start_ian(settings))
        if http:
            running.callback(_start_emr_feed(settings))
            banner += f"  |  Web UI and API: http://{settings.host}:{settings.http_port}/"
            _run_http(settings, dicom, banner, started)
        else:
            _announce(banner, started, lambda: dicom.ready)
            _wait_for_signal()


def _migrate(settings: Settings) -> None:
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import upgrade

    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()


def _background(settings: Settings, worker: bool) -> Background:
    """The lifecycle/job threads of this node; a bad rules file or setting stops the start."""
    from pacs.jobs.background import Background
    from pacs.jobs.rules import RulesError
    from pacs.runtime import build_ingest

    try:
        ingest = build_ingest(settings) if worker else None
        return Background(settings, worker=worker, ingest=ingest)
    except (ValueError, RulesError) as exc:
        raise SystemExit(f"error: {exc}") from None


def _start_emr_feed(settings: Settings) -> Callable[[], None]:
    from pacs.emr.feed import start_emr_feed

    return start_emr_feed(settings)


def _start_ian(settings: Settings) -> Callable[[], None]:
    from pacs.ian import start_ian

    return start_ian(settings)


def _start_hl7_listener(settings: Settings) -> Callable[[], None]:
    from pacs.hl7.receiver import start_hl7_listener

    return start_hl7_listener(settings)


def _announce(banner: str, started: float, ready: Callable[[], bool]) -> None:
    """Print ``banner`` (and the start-up time) from a thread once ``ready()`` is true."""

    def wait() -> None:
        while not ready():
            time.sleep(READY_POLL_SECONDS)
        print(f"{banner}  |  ready in {time.monotonic() - started:.1f} s", flush=True)

    threading.Thread(target=wait, name="ready-banner", daemon=True).start()


def _run_http(settings: Settings, dicom: DicomServer, banner: str, started: float) -> None:
    """Serve the HTTP API; announce the node once uvicorn listens and the DICOM port is ready.
    uvicorn logs through the root logger (quiet unless DEBUG, see ``pacs.logging``)."""
    import uvicorn

    from viewer_api.app import create_app

    config = uvicorn.Config(
        create_app(settings, dicom),
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        log_level=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    _announce(banner, started, lambda: server.started and dicom.ready)
    server.run()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    stop.wait()
