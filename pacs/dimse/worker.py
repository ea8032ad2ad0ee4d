"""One DICOM worker process: serves the connections the parent hands over.

Each connection's A-ASSOCIATE-RQ is peeked at (not consumed): a storage association goes to
the lean ``StorageAcceptor``, anything else to pynetdicom's association server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from pacs.config import Settings
from pacs.dimse.acceptor import StorageAcceptor, decode_associate_rq, is_storage_request
from pacs.dimse.ae import STORAGE_SOP_CLASSES, build_ae
from pacs.dimse.find import FindService, match_options
from pacs.dimse.handlers import Handlers
from pacs.dimse.policy import AEPolicy, CallingAE
from pacs.dimse.pynetdicom_internals import (
    SharedContexts,
    TunedRequestHandler,
    quiet_identifier_logging,
)
from pacs.dimse.retrieve import RetrieveService
from pacs.dimse.store import StoreHandler
from pacs.dimse.worklist import WorklistService
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine, session_factory
from pacs.logging import configure_logging
from pacs.runtime import build_ingest
from pacs.worklist.source import WorklistSource

log = logging.getLogger(__name__)


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
        quiet_identifier_logging()
    policy = AEPolicy(settings.allowed_aes, settings.accept_any_ae)
    ingest = build_ingest(settings)
    store = StoreHandler(ingest, policy)
    query_sessions = session_factory(create_index_engine(settings))
    callers = CallingAE(policy, query_sessions, settings.host)
    retrieve = RetrieveService(
        session_factory(ingest.engine), ingest.store, callers, settings.move_routes
    )
    handlers = Handlers(store, policy, retrieve)
    handlers.find = FindService(query_sessions, callers, match_options(settings))
    worklist_engine = create_index_engine(settings)
    handlers.worklist = WorklistService(
        WorklistSource(
            FhirStore(worklist_engine), worklist_engine, settings.worklist_remove_on_arrival
        ),
        callers,
    )
    ae = build_ae(settings, policy)
    send_lock = threading.Lock()

    def on_closed(_event: Any = None) -> None:
        with send_lock, contextlib.suppress(OSError):
            control.sendall(b"c")

    server = _HandedOverServer(
        ae,
        (settings.host, 0),
        settings.ae_title,
        SharedContexts(ae.supported_contexts),
        evt_handlers=[*handlers.bindings(), (evt.EVT_CONN_CLOSE, on_closed)],
        request_handler=TunedRequestHandler,
    )
    server.daemon_threads = True
    acceptor = StorageAcceptor(
        settings.ae_title,
        ae.supported_contexts,
        policy,
        store,
        settings.network_timeout,
        settings.max_associations,
    )

    def serve(conn: socket.socket, host: str, port: int) -> None:
        request = _peek_associate_rq(conn, settings.acse_timeout)
        if request is not None and is_storage_request(request, STORAGE_SOP_CLASSES):
            acceptor.serve(conn, host, on_closed)
        else:
            conn.settimeout(None)
            server.process_request(conn, (host, port))

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
            thread = threading.Thread(
                target=serve, args=(conn, host, int(port or 0)), name="association", daemon=True
            )
            thread.start()


_PEEK_LIMIT = 1024 * 1024
"""A-ASSOCIATE-RQ PDUs longer than this are left to pynetdicom (which will refuse them)."""


def _peek_associate_rq(conn: socket.socket, timeout: float) -> Any:
    """The A-ASSOCIATE primitive of the connection's first PDU, left unread; None if it is
    not a decodable A-ASSOCIATE-RQ (pynetdicom then answers it as the standard requires)."""
    try:
        conn.settimeout(timeout)
        header = conn.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(header) < 6 or header[0] != 0x01:
            return None
        length = int.from_bytes(header[2:6], "big")
        if length > _PEEK_LIMIT:
            return None
        data = conn.recv(6 + length, socket.MSG_PEEK | socket.MSG_WAITALL)
        return decode_associate_rq(data) if len(data) == 6 + length else None
    except Exception:  # timeouts, resets, undecodable PDUs: pynetdicom deals with them
        return None
