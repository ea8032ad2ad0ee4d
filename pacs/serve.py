"""``pacs serve`` / ``pacs scp``: migrations, the DICOM server and the HTTP API in one node."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from pacs.config import Settings
from pacs.dimse.server import DicomServer
from pacs.emr.feed import start_emr_feed
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.jobs.background import Background
from pacs.jobs.rules import RulesError
from pacs.logging import configure_logging

log = logging.getLogger(__name__)


def run_serve(settings: Settings, http: bool) -> None:
    """Apply migrations, start the DICOM server, then the HTTP API (or wait) until a signal."""
    configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    background = _background(settings, worker=http and settings.serve_worker)
    dicom = DicomServer(settings)
    dicom.start()
    background.start()  # sweeper, job reaper, webhooks (and a worker): after the SCP forks
    stop_emr_feed = start_emr_feed(settings) if http else None
    print(
        f"DICOM: AE title {settings.ae_title} on {settings.host}:{dicom.port}"
        + (f"  |  Web UI and API: http://{settings.host}:{settings.http_port}/" if http else ""),
        flush=True,
    )
    try:
        if http:
            _run_http(settings, dicom)
        else:
            _wait_for_signal()
    finally:
        if stop_emr_feed is not None:
            stop_emr_feed()
        background.stop()
        dicom.stop()


def _background(settings: Settings, worker: bool) -> Background:
    """The lifecycle/job threads of this node; a bad rules file or setting stops the start."""
    try:
        return Background(settings, worker=worker)
    except (ValueError, RulesError) as exc:
        raise SystemExit(f"error: {exc}") from None


def _run_http(settings: Settings, dicom: DicomServer) -> None:
    import uvicorn

    from viewer_api.app import create_app

    config = uvicorn.Config(
        create_app(settings, dicom),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    uvicorn.Server(config).run()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    stop.wait()
