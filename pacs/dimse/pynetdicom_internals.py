"""Every use of pynetdicom's private internals, in one place, for pynetdicom ``WRITTEN_FOR``.

The rest of ``pacs.dimse`` uses pynetdicom's public API only. What is here replaces or calls
private methods and attributes (``Association._reactor_checkpoint``, ``DIMSEServiceProvider
.get_msg``, ``AssociationSocket.recv``, ``_config``, ...) that may change in any release
without notice; ``tests/test_pynetdicom_internals.py`` fails loudly on another version, and
importing this module logs a warning, so an upgrade means re-reading pynetdicom's source for
each function below (and then raising ``WRITTEN_FOR``).

- Speed-ups of the acceptor (``tune_acceptor``): the reactor polls the DIMSE message queue
  with 1 ms sleeps, so every message waits up to a millisecond before it is served; and the
  transport reads PDUs 4 KiB at a time, about 130 ``recv`` calls per 512 KiB slice (and never
  checks a PDU's length against the maximum it announced: ours refuses it). Each fix
  replaces one method on one association's own objects, so pynetdicom's shared classes and
  every other association (e.g. our own SCU) stay untouched.
- ``exchange_c_store``: one C-STORE request whose data set is given as encoded bytes and its
  response, as ``Association.send_c_store`` does it but without decoding and re-encoding.
- ``replace_send_c_store`` and ``answer_instead``: hooks into the C-MOVE/C-GET service so
  sub-operations send stored bytes and a refused identifier gets its own final status.
- ``TunedRequestHandler`` and ``SharedContexts``: the association server of a worker.
- ``quiet_identifier_logging``: pynetdicom's per-message logs print identifiers.
- ``choose_sending_syntaxes``: the transfer syntax of a context in which the acceptor sends
  (C-GET's role-reversed storage contexts) is chosen by what it can serve, not by the
  preference for receiving.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from typing import Any, cast

import pynetdicom
import pynetdicom.acse
from pydicom.dataset import Dataset
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import RequestHandler

from pacs.dimse.pdu import ABORT_INVALID_PDU_PARAMETER, MAX_ASSOCIATE_RQ_LENGTH, a_abort

log = logging.getLogger(__name__)

WRITTEN_FOR = "3.0.4"
"""The pynetdicom version whose internals this module was written against."""

if pynetdicom.__version__ != WRITTEN_FOR:
    log.warning(
        "pynetdicom %s is installed; pacs.dimse.pynetdicom_internals was written for %s",
        pynetdicom.__version__,
        WRITTEN_FOR,
    )

IDLE_WAIT = 0.005
"""Longest time the reactor waits for a DIMSE message before its release/abort checks."""

DUL_LOOP_DELAY = 0.0005
"""Sleep of the DUL thread when it has nothing to do (pynetdicom's default: 1 ms)."""


# ---------------------------------------------------------------- acceptor speed-ups


def wake_on_message(assoc: Association) -> None:
    """Serve a DIMSE message as soon as it is complete.

    A non-blocking poll of an empty queue waits on the queue's own condition (up to
    ``IDLE_WAIT``) instead of returning at once into the reactor's 1 ms sleep.
    """
    dimse = assoc.dimse
    messages = dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        if not block:
            with messages.not_empty:
                if not messages.queue:  # qsize() would take the held mutex again
                    messages.not_empty.wait(IDLE_WAIT)
        try:
            return messages.get(block=block, timeout=dimse.dimse_timeout)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg  # type: ignore[method-assign]
    assoc.dul._run_loop_delay = DUL_LOOP_DELAY


def read_whole_pdus(assoc: Association, max_length: int) -> None:
    """Read each PDU with as few ``recv_into`` calls as the kernel allows; a PDU longer than
    ``max_length`` is answered A-ABORT (invalid PDU parameter) before anything is allocated
    for it, and the connection closed (pynetdicom's Evt17)."""
    transport = assoc.dul.socket
    if transport is None:
        return

    def recv(nr_bytes: int) -> bytearray:
        sock = transport.socket
        if nr_bytes > max_length:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.sendall(a_abort(reason=ABORT_INVALID_PDU_PARAMETER))
            raise OSError(f"PDU of {nr_bytes} bytes refused: the limit is {max_length}")
        buffer = bytearray(nr_bytes)
        read = 0
        with memoryview(buffer) as view:
            while read < nr_bytes and sock is not None:
                count = sock.recv_into(view[read:], nr_bytes - read)
                if not count:  # connection closed: return what arrived, as pynetdicom does
                    break
                read += count
        del buffer[read:]
        return buffer

    transport.recv = recv  # type: ignore[method-assign]


def limit_data_sets(assoc: Association, max_size: int) -> None:
    """A-ABORT an association whose incoming DIMSE data set grows past ``max_size``:
    pynetdicom holds a message's data set in memory until its last fragment (the lean
    storage acceptor answers ``0xA700`` instead; this path serves mixed associations)."""
    dimse = assoc.dimse
    original = dimse.receive_primitive
    refused = False

    def receive_primitive(primitive: Any) -> None:
        nonlocal refused
        if refused:
            return  # fragments still arriving before the abort: dropped
        original(primitive)
        message = dimse.message
        data_set = getattr(message, "data_set", None)
        if data_set is not None and data_set.tell() > max_size:
            refused = True
            dimse.message = None
            log.warning("data set over %d bytes on a pynetdicom association; aborting", max_size)
            assoc.abort(block=False)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]


def tune_acceptor(assoc: Association, max_object_size: int | None = None) -> None:
    """Apply every speed-up, the PDU length limit and (when given) the data set limit to a
    new acceptor association."""
    wake_on_message(assoc)
    limit = assoc.ae.maximum_pdu_size or MAX_ASSOCIATE_RQ_LENGTH
    read_whole_pdus(assoc, max(limit, MAX_ASSOCIATE_RQ_LENGTH))
    if max_object_size is not None:
        limit_data_sets(assoc, max_object_size)


class TunedRequestHandler(RequestHandler):
    """pynetdicom's request handler whose associations get :func:`tune_acceptor` (with the
    server's ``max_object_size`` attribute, when it has one); the association it started is
    kept in ``association`` (the caller joins it)."""

    association: Association | None = None

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        tune_acceptor(assoc, getattr(self.server, "max_object_size", None))
        self.association = assoc
        return assoc


class SharedContexts(list[Any]):
    """The supported presentation contexts, shared by every association of the process.

    pynetdicom deep-copies the server's contexts for each association (about 0.1 s of CPU
    for 171 SOP classes x 39 transfer syntaxes); acceptor negotiation only reads them and
    builds new result contexts, so one shared list is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self


def quiet_identifier_logging() -> None:
    """Stop pynetdicom's per-message log handlers, which print C-FIND/MOVE/GET identifiers."""
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False


Chooser = Callable[[list[str], list[str]], str | None]
"""(offered transfer syntaxes, supported ones) -> the one to accept."""


def choose_sending_syntaxes(choose: Chooser) -> None:
    """Make pynetdicom's acceptor negotiation (in this process) pick the transfer syntax of
    each accepted context in which the acceptor is the Storage SCU (SCP/SCU role selection,
    as a C-GET requestor proposes) with ``choose``; pynetdicom picks the first of the
    acceptor's own list, the order of preference for receiving objects."""
    original = pynetdicom.acse.negotiate_as_acceptor  # type: ignore[attr-defined]
    if getattr(original, "chooses_sending_syntaxes", False):
        return

    def negotiate(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
        results, replies = original(rq_contexts, ac_contexts, roles)
        offered = {cx.context_id: [str(ts) for ts in cx.transfer_syntax] for cx in rq_contexts}
        supported = {
            str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in ac_contexts
        }
        for cx in results:
            if cx.result == 0x00 and cx.as_scu:
                syntax = choose(
                    offered.get(cx.context_id, []), supported.get(str(cx.abstract_syntax), [])
                )
                if syntax is not None:
                    cx.transfer_syntax = [syntax]
        return results, replies

    negotiate.chooses_sending_syntaxes = True  # type: ignore[attr-defined]
    pynetdicom.acse.negotiate_as_acceptor = negotiate  # type: ignore[attr-defined]


# ---------------------------------------------------------------- DIMSE exchanges


def exchange_c_store(assoc: Association, request: C_STORE, context_id: int) -> Dataset | None:
    """Send ``request`` (its ``DataSet`` already encoded) and wait for the response; the
    response's status data set, or None when none came (the association is then aborted,
    as ``send_c_store`` does)."""
    assoc._reactor_checkpoint.clear()  # pause the reactor while we wait for the response
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        _cx, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        assoc._handle_no_response()
        return None
    return assoc._check_received_status(cast(C_STORE, response))


def replace_send_c_store(
    assoc: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Make ``assoc.send_c_store`` (called by pynetdicom's C-MOVE/C-GET service for each
    sub-operation) ``wrap(original)``."""
    assoc.send_c_store = wrap(assoc.send_c_store)


def answer_instead(assoc: Any, status: int) -> None:
    """Make the next response pynetdicom sends on ``assoc`` carry ``status``."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        primitive.Status = status
        dimse.send_msg = original
        original(primitive, context_id)

    dimse.send_msg = send_msg
