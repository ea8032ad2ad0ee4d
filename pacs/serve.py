"""``pacs serve`` / ``pacs scp``: migrations, the DICOM server and the HTTP API in one node.

Start-up order, chosen so that the slow parts overlap: the DICOM workers are forked first (they
load pydicom and pynetdicom and build their AEs) while this process applies the migrations and
loads the HTTP app; connections are dispatched only once the migrations are applied. The
banner is printed when the node is ready (``/health/ready`` answers 200), not before.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from pacs.config import Settings
from pacs.dimse.server import DicomServer
from pacs.logging import configure_logging

if TYPE_CHECKING:
    import uvicorn

    from pacs.jobs.background import Background

log = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.05


def run_serve(settings: Settings, http: bool) -> None:
    """Apply migrations, start the DICOM server, then the HTTP API (or wait) until a signal.
    Whatever was started is stopped on the way out, start-up failures included."""
    started = time.monotonic()
    configure_logging(settings)
    warn_hostless_aes(settings)
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
        if dicom.tls_port:
            banner += f" (TLS {dicom.tls_port})"
        if settings.hl7_port:
            running.callback(_start_hl7_listener(settings))
        running.callback(_start_ian(settings))
        if http:
            running.callback(_start_emr_feed(settings))
            scheme = "https" if settings.tls_certificate else "http"
            banner += f"  |  Web UI and API: {scheme}://{settings.host}:{settings.http_port}/"
            _run_http(settings, dicom, banner, started)
        else:
            _announce(banner, started, lambda: dicom.ready)
            _wait_for_signal()


def _migrate(settings: Settings) -> None:
    """Apply the migrations; on the first start of a local-accounts archive create its
    administrator and print the password on the console (never into the log)."""
    from pacs.index.engine import create_index_engine, session_factory
    from pacs.index.migrate import upgrade
    from pacs.security.authn import first_start

    engine = create_index_engine(settings)
    upgrade(engine)
    with session_factory(engine)() as session:
        notice = first_start(settings, session)
    engine.dispose()
    if notice:
        print(notice, flush=True)


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

    server = uvicorn.Server(http_config(settings, create_app(settings, dicom)))
    _announce(banner, started, lambda: server.started and dicom.ready)
    server.run()


def http_config(settings: Settings, app: Any) -> uvicorn.Config:
    """uvicorn's configuration: HTTPS (TLS 1.2+) when ``tls_certificate`` is set; the
    X-Forwarded-For/-Proto headers of the proxies in ``forwarded_allow_ips`` trusted (the
    client address and scheme then are the proxy's client's, so HSTS and audit see them)."""
    import uvicorn

    def tls12(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        log_level=None,
        access_log=False,
        ssl_certfile=settings.tls_certificate,
        ssl_keyfile=settings.tls_key,
        ssl_context_factory=tls12 if settings.tls_certificate else None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def warn_hostless_aes(settings: Settings) -> None:
    """An allow-list entry without a host admits its title from any address (AE titles are
    not secrets): warn, naming each, or refuse to start with ``refuse_hostless_aes``."""
    hostless = [entry.title for entry in settings.allowed_aes if entry.host == "*"]
    if not hostless:
        return
    message = (
        f"allowed_aes entries without a host admit their title from any address: "
        f"{', '.join(hostless)}; write TITLE@host"
    )
    if settings.refuse_hostless_aes:
        raise SystemExit(f"error: {message} (PACS_REFUSE_HOSTLESS_AES is set)")
    log.warning(message)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    stop.wait()
