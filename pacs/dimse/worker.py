"""One DICOM worker process: a pynetdicom AE serving connections it is handed."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacs.config import Settings
from pacs.dimse import tuning
from pacs.dimse.ae import build_ae
from pacs.dimse.handlers import Handlers
from pacs.dimse.policy import AEPolicy
from pacs.logging import configure_logging
from pacs.runtime import build_ingest

log = logging.getLogger(__name__)


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        tuning.install(assoc)
        return assoc


class _SharedContexts(list[Any]):
    """The supported presentation contexts, shared by every association of the process.

    pynetdicom deep-copies the server's contexts for each association (about 0.1 s of CPU
    for 171 SOP classes x 39 transfer syntaxes); acceptor negotiation only reads them and
    builds new result contexts, so one shared list is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContexts:
        return self


class _HandedOverServer(ThreadedAssociationServer):
    """An association server that never listens: connections arrive by fd passing."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


def serve_connections(settings: Settings, control: socket.socket) -> None:
    """Run associations for sockets received on ``control`` until the parent goes away."""
    configure_logging(settings)
    if not settings.log_phi:  # pynetdicom's per-message log handlers print identifiers
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    policy = AEPolicy.from_setting(settings.allowed_aes, settings.accept_any_ae)
    handlers = Handlers(build_ingest(settings), policy)
    ae = build_ae(settings, policy)
    send_lock = threading.Lock()

    def on_closed(_event: Any) -> None:
        with send_lock, contextlib.suppress(OSError):
            control.sendall(b"c")

    server = _HandedOverServer(
        ae,
        (settings.host, 0),
        settings.ae_title,
        _SharedContexts(ae.supported_contexts),
        evt_handlers=[*handlers.bindings(), (evt.EVT_CONN_CLOSE, on_closed)],
        request_handler=_RequestHandler,
    )
    server.daemon_threads = True
    try:
        with send_lock:
            control.sendall(b"r")
    except OSError:
        return  # the parent is already gone
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(control, 256, 1)
        except OSError:
            return
        if not message:
            return  # parent closed the control socket: stop
        for fd in fds:
            host, _, port = message.decode().partition("|")
            conn = socket.socket(fileno=fd)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(None)
            server.process_request(conn, (host, int(port or 0)))
