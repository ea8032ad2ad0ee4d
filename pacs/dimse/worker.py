"""One DICOM worker process: serves the connections the parent hands over.

Each connection's A-ASSOCIATE-RQ is peeked at (not consumed): a storage association goes to
the lean ``StorageAcceptor``, anything else to pynetdicom's association server. A connection
of the DICOM TLS port is wrapped in TLS here (handshake, client certificate) and served by
pynetdicom, whose handlers check the calling AE against the certificate. Both ports share the
process's ``max_associations`` slots: a connection beyond them is answered A-ASSOCIATE-RJ
(transient, local limit exceeded) before any association state is built.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from pacs import metrics
from pacs.audit import export as audit_export
from pacs.audit.dimse import DimseAudit
from pacs.config import Settings
from pacs.dimse import pdu
from pacs.dimse.acceptor import (
    REJECT_BUSY,
    StorageAcceptor,
    decode_associate_rq,
    is_storage_request,
)
from pacs.dimse.ae import build_ae
from pacs.dimse.commitment import CommitmentHandler
from pacs.dimse.find import FindService, match_options
from pacs.dimse.handlers import Handlers
from pacs.dimse.limits import AssociationSlots, MemoryBudget
from pacs.dimse.mpps import MppsHandler
from pacs.dimse.policy import AEPolicy, CallingAE
from pacs.dimse.pynetdicom_internals import (
    SharedContexts,
    TunedRequestHandler,
    choose_sending_syntaxes,
    quiet_identifier_logging,
)
from pacs.dimse.retrieve import RetrieveService
from pacs.dimse.scu import sending_syntax
from pacs.dimse.store import StoreHandler
from pacs.dimse.tls import peer_tls_args, server_context
from pacs.dimse.worklist import WorklistService
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine, session_factory
from pacs.ingest.acceptance import STORAGE_SOP_CLASSES
from pacs.logging import configure_logging
from pacs.mpps.service import MppsService
from pacs.runtime import build_ingest
from pacs.worklist.source import WorklistSource

log = logging.getLogger(__name__)


class _HandedOverServer(ThreadedAssociationServer):
    """An association server that never listens: connections arrive by fd passing."""

    max_object_size: int | None = None  # read by TunedRequestHandler

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def serve_association(self, conn: socket.socket, address: tuple[str, int]) -> None:
        """Run one association on ``conn`` in pynetdicom and wait until it has ended."""
        handler = TunedRequestHandler(conn, address, self)
        if handler.association is not None:
            handler.association.join()


def serve_connections(settings: Settings, control: socket.socket) -> None:
    """Run associations for sockets received on ``control`` until the parent goes away."""
    configure_logging(settings)
    if not settings.log_phi:  # pynetdicom's per-message log handlers print identifiers
        quiet_identifier_logging()
    choose_sending_syntaxes(sending_syntax)  # C-GET: accept what the archive can serve
    policy = AEPolicy(settings.allowed_aes, settings.accept_any_ae)
    ingest = build_ingest(settings)
    audit_export.install(settings.audit_syslog_url)
    audit = DimseAudit(create_index_engine(settings))
    store = StoreHandler(ingest, policy, audit)
    query_sessions = session_factory(create_index_engine(settings))
    callers = CallingAE(policy, query_sessions, settings.host)
    retrieve = RetrieveService(
        session_factory(ingest.engine),
        ingest.store,
        callers,
        settings.move_routes,
        lambda title, host: peer_tls_args(settings, title, host),
    )
    handlers = Handlers(store, policy, retrieve)
    handlers.audit = audit
    tls = server_context(settings) if settings.dicom_tls else None
    if settings.dicom_tls_match_ae:
        handlers.certificate_aes = settings.dicom_tls_ae_certificates
    handlers.find = FindService(query_sessions, callers, match_options(settings))
    worklist_engine = create_index_engine(settings)
    handlers.worklist = WorklistService(
        WorklistSource(
            FhirStore(worklist_engine),
            worklist_engine,
            settings.worklist_remove_on_arrival,
            settings.worklist_station_organisations,
        ),
        callers,
    )
    handlers.mpps = MppsHandler(MppsService(worklist_engine), callers, audit)
    handlers.commitment = CommitmentHandler(settings, ingest.engine, ingest.store, callers, audit)
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
    server.max_object_size = settings.max_object_size
    acceptor = StorageAcceptor(
        settings.ae_title,
        ae.supported_contexts,
        policy,
        store,
        settings.network_timeout,
        settings.max_pdu_size,
        MemoryBudget(settings.scp_memory_budget),
    )
    slots = AssociationSlots(settings.max_associations)
    refusals = AssociationSlots(settings.max_associations)  # connections being answered RJ

    def serve(conn: socket.socket, host: str, port: int, secure: bool) -> None:
        if not slots.acquire():
            if refusals.acquire():  # an orderly A-ASSOCIATE-RJ, waiting for the request
                try:
                    wait = min(settings.acse_timeout, _BUSY_READ_TIMEOUT)
                    _refuse_busy(conn, wait, slots.limit)
                finally:
                    refusals.release()
            else:  # a flood: no thread waits on it
                conn.close()
            on_closed()
            return
        try:
            if secure:
                assert tls is not None
                try:
                    conn.settimeout(settings.acse_timeout)
                    conn = tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    log.warning("DICOM TLS handshake with %s failed: %s", host, exc)
                    conn.close()
                    on_closed()
                    return
                conn.settimeout(None)
                server.serve_association(conn, (host, port))
                return
            request = _peek_associate_rq(conn, settings.acse_timeout)
            if request is None and _peer_closed(conn):
                conn.close()
                on_closed()
            elif request is not None and is_storage_request(request, STORAGE_SOP_CLASSES):
                acceptor.serve(conn, host, on_closed)
            else:
                conn.settimeout(None)
                server.serve_association(conn, (host, port))
        except Exception:  # pynetdicom's handler setup failing: drop this connection only
            log.exception("association from %s failed", host)
            conn.close()
        finally:
            slots.release()

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
            host, port, secure = [*message.decode().split("|"), "", ""][:3]
            conn = socket.socket(fileno=fd)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=serve,
                args=(conn, host, int(port or 0), secure == "tls"),
                name="association",
                daemon=True,
            )
            thread.start()


_PEEK_LIMIT = pdu.MAX_ASSOCIATE_RQ_LENGTH
"""A-ASSOCIATE-RQ PDUs longer than this are left to pynetdicom (which aborts them)."""
_BUSY_READ_TIMEOUT = 5.0
"""Longest wait for the A-ASSOCIATE-RQ of a connection refused for want of a slot."""


def _peer_closed(conn: socket.socket) -> bool:
    """True when the peer has closed the connection (nothing left to read)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except OSError:  # nothing to read yet (BlockingIOError), or reset
        return False


def _refuse_busy(conn: socket.socket, timeout: float, limit: int) -> None:
    """A-ASSOCIATE-RJ (transient, local limit exceeded): read what the peer sent first (at
    most one A-ASSOCIATE-RQ), so that closing does not reset the connection before the peer
    has read the answer."""
    metrics.ASSOCIATIONS.labels("busy").inc()
    log.warning("association refused: all %d association slots of this process are taken", limit)
    with contextlib.suppress(OSError), conn:
        conn.settimeout(timeout)
        header = pdu.recv_exact(conn, 6)
        length = int.from_bytes(header[2:6], "big")
        if header[0] == pdu.A_ASSOCIATE_RQ and length <= _PEEK_LIMIT:
            pdu.recv_exact(conn, length)
        conn.sendall(pdu.a_associate_rj(*REJECT_BUSY))
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # until the peer closes (or the timeout)


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
