"""A lean acceptor for storage associations: Verification and C-STORE, nothing else.

pynetdicom runs an association on two threads joined by queues and a state machine, and
spends more CPU per C-STORE than the archive's whole ingest. An association whose proposed
abstract syntaxes are all storage SOP classes (or Verification) - what modalities open - is
served here on one thread: negotiation with pynetdicom's PDU classes and negotiation rules,
then a loop that reads whole PDUs, joins the PDV fragments and answers each C-STORE after the
ingest. Any other association (query/retrieve, ...) goes to pynetdicom unchanged.

Memory: a PDU longer than the ``max_pdu_size`` announced in the A-ASSOCIATE-AC is aborted
before anything is allocated for it; a C-STORE data set is written as it arrives into one
growing Part-10 buffer (about 1.1x the object, handed to the ingest without a copy), within
the process's ``MemoryBudget``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from pacs import metrics
from pacs.audit.dimse import StudyTransfers
from pacs.dimse import pdu
from pacs.dimse.limits import MemoryBudget
from pacs.dimse.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PREAMBLE,
    file_meta,
)
from pacs.dimse.policy import AEPolicy
from pacs.dimse.status import OUT_OF_RESOURCES, SUCCESS
from pacs.dimse.store import StoreHandler

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded
MAX_COMMAND_LENGTH = 64 * 1024
"""Longest command set accepted (a C-STORE-RQ is about 200 bytes)."""


def decode_associate_rq(data: bytes) -> A_ASSOCIATE:
    """The A-ASSOCIATE primitive of an encoded A-ASSOCIATE-RQ PDU."""
    request = AssociateRqPDU()
    request.decode(data)
    return request.to_primitive()


def is_storage_request(primitive: A_ASSOCIATE, storage_classes: frozenset[str]) -> bool:
    """True when every proposed abstract syntax is a storage SOP class or Verification."""
    contexts = primitive.presentation_context_definition_list
    return bool(contexts) and all(
        str(cx.abstract_syntax) in storage_classes or cx.abstract_syntax == VERIFICATION
        for cx in contexts
    )


@dataclass
class _Message:
    """A DIMSE message being assembled from PDV fragments."""

    context_id: int
    command: dict[int, int | str]
    part10: io.BytesIO | None = None  # a C-STORE's Part-10 object: file meta, then fragments
    size: int = 0  # data set bytes received
    reserved: int = 0  # of them, held in ``part10`` against the memory budget
    refusal: str = ""  # why the data set is read and dropped (the C-STORE is refused)


class StorageAcceptor:
    """Serves storage associations for one worker process (one thread per association)."""

    def __init__(
        self,
        ae_title: str,
        contexts: list[PresentationContext],
        policy: AEPolicy,
        store: StoreHandler,
        network_timeout: float,
        max_pdu_size: int,
        budget: MemoryBudget,
    ) -> None:
        self.ae_title = ae_title
        self.contexts = contexts
        self.policy = policy
        self.store = store
        self.network_timeout = network_timeout
        self.max_pdu_size = max_pdu_size
        self.budget = budget

    def serve(self, sock: socket.socket, host: str, closed: Callable[[], None]) -> None:
        """Run one association to its end (release, abort, timeout or error); never raises."""
        try:
            sock.settimeout(self.network_timeout)
            self._associate_and_serve(sock, host)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.warning("association from %s dropped: %s", host, exc or type(exc).__name__)
        except pdu.ProtocolError as exc:
            log.warning("association from %s aborted: %s", host, exc)
            _send_quietly(sock, pdu.a_abort(reason=exc.reason))
        except Exception:
            log.exception("association from %s failed; aborting", host)
            _send_quietly(sock, pdu.a_abort())
        finally:
            sock.close()
            closed()

    def _associate_and_serve(self, sock: socket.socket, host: str) -> None:
        pdu_type, body = pdu.read_pdu(sock, pdu.MAX_ASSOCIATE_RQ_LENGTH)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type:#04x}")
        request = decode_associate_rq(bytes([pdu_type, 0]) + len(body).to_bytes(4, "big") + body)
        title = str(request.calling_ae_title).strip()
        if not self.policy.is_allowed(title, host):
            metrics.ASSOCIATIONS.labels("refused").inc()
            log.warning("association from %s at %s refused by AE policy", title, host)
            sock.sendall(pdu.a_associate_rj(*REJECT_CALLING_AE))
            return
        accepted = self._accept(sock, request)
        metrics.ASSOCIATIONS.labels("accepted").inc()
        transfers = self.store.transfers(title, host)
        message: list[_Message] = []  # the one being received, for its memory reservation
        try:
            self._data_phase(sock, accepted, title, host, message, transfers)
        finally:
            for unfinished in message:
                self.budget.release(unfinished.reserved)
            if transfers is not None:
                transfers.close()

    def _accept(self, sock: socket.socket, request: A_ASSOCIATE) -> dict[int, tuple[str, str]]:
        """Negotiate, send A-ASSOCIATE-AC; return context ID -> (abstract, transfer syntax)."""
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results, role_replies = negotiate_as_acceptor(
            request.presentation_context_definition_list, self.contexts, roles
        )
        response = A_ASSOCIATE()
        response.application_context_name = request.application_context_name
        response.calling_ae_title = request.calling_ae_title
        response.called_ae_title = request.called_ae_title
        response.result = 0x00
        response.presentation_context_definition_results_list = results
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = self.max_pdu_size
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        response.user_information = [maximum, class_uid, version, *role_replies]
        accept = AssociateAcPDU()
        accept.from_primitive(response)
        sock.sendall(accept.encode())
        return {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results
            if cx.result == 0x00 and cx.context_id is not None
        }

    def _data_phase(
        self,
        sock: socket.socket,
        contexts: dict[int, tuple[str, str]],
        title: str,
        host: str,
        current: list[_Message],
        transfers: StudyTransfers | None = None,
    ) -> None:
        """Serve messages until release or abort; ``current`` holds the message in flight."""
        command_bytes = bytearray()
        while True:
            pdu_type, body = pdu.read_pdu(sock, self.max_pdu_size)
            if pdu_type == pdu.A_RELEASE_RQ:
                sock.sendall(pdu.a_release_rp())
                return
            if pdu_type == pdu.A_ABORT:
                log.info("association from %s aborted by the peer", title)
                return
            if pdu_type != pdu.P_DATA_TF:
                raise pdu.ProtocolError(f"unexpected PDU type {pdu_type:#04x}")
            for context_id, is_command, last, data in pdu.pdv_items(body):
                if context_id not in contexts:
                    raise pdu.ProtocolError(
                        f"PDV on presentation context {context_id} not accepted"
                    )
                if is_command:
                    if current:
                        raise pdu.ProtocolError("command fragment while a data set was expected")
                    command_bytes += data
                    if len(command_bytes) > MAX_COMMAND_LENGTH:
                        raise pdu.ProtocolError("command set longer than 64 KiB")
                    if not last:
                        continue
                    message = self._begin(
                        context_id, pdu.decode_command(bytes(command_bytes)), contexts, title
                    )
                    command_bytes.clear()
                    current.append(message)
                    if message.command.get(pdu.COMMAND_DATA_SET_TYPE) == pdu.NO_DATA_SET:
                        self._answer(sock, current, contexts, title, host, transfers)
                elif not current or context_id != current[0].context_id:
                    raise pdu.ProtocolError("data set fragment without its command")
                else:
                    self._receive(current[0], data)
                    if last:
                        self._answer(sock, current, contexts, title, host, transfers)

    def _begin(
        self,
        context_id: int,
        command: dict[int, int | str],
        contexts: dict[int, tuple[str, str]],
        title: str,
    ) -> _Message:
        """A new message; a C-STORE's Part-10 buffer starts with its file meta."""
        message = _Message(context_id, command)
        if command.get(pdu.COMMAND_FIELD) == pdu.C_STORE_RQ:
            abstract_syntax, transfer_syntax = contexts[context_id]
            meta = file_meta(
                str(command.get(pdu.AFFECTED_SOP_CLASS_UID, abstract_syntax)),
                str(command.get(pdu.AFFECTED_SOP_INSTANCE_UID, "")),
                transfer_syntax,
                title,
            )
            message.part10 = io.BytesIO()
            message.part10.write(PREAMBLE + meta)
        return message

    def _receive(self, message: _Message, data: memoryview) -> None:
        """Append one data set fragment, or drop it once the C-STORE is to be refused."""
        message.size += len(data)
        if message.part10 is None or message.refusal:
            return
        limit = self.store.ingest.max_object_size
        if message.size > limit:
            message.refusal = f"object larger than {limit} bytes; nothing stored"
        elif not self.budget.reserve(len(data)):
            message.refusal = "out of memory for received objects; retry later"
        else:
            message.reserved += len(data)
            message.part10.write(data)
            return
        message.part10 = None
        self.budget.release(message.reserved)
        message.reserved = 0

    def _answer(
        self,
        sock: socket.socket,
        current: list[_Message],
        contexts: dict[int, tuple[str, str]],
        title: str,
        host: str,
        transfers: StudyTransfers | None,
    ) -> None:
        message = current[0]
        try:
            response = self._response(message, contexts, title, host, transfers)
        finally:
            current.clear()
            self.budget.release(message.reserved)
        sock.sendall(pdu.p_data_command(message.context_id, response))

    def _response(
        self,
        message: _Message,
        contexts: dict[int, tuple[str, str]],
        title: str,
        host: str,
        transfers: StudyTransfers | None,
    ) -> bytes:
        command = message.command
        field_ = command.get(pdu.COMMAND_FIELD)
        message_id = int(command.get(pdu.MESSAGE_ID, 0))
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS_UID, contexts[message.context_id][0]))
        sop_instance = str(command.get(pdu.AFFECTED_SOP_INSTANCE_UID, ""))
        if field_ == pdu.C_ECHO_RQ:
            return pdu.encode_response(pdu.C_ECHO_RSP, message_id, sop_class, SUCCESS)
        if field_ == pdu.C_STORE_RQ and message.refusal:
            metrics.REJECTED.labels("dimse").inc()
            log.warning(
                "C-STORE from %s refused (%d bytes): %s", title, message.size, message.refusal
            )
            if transfers is not None:
                transfers.add("", OUT_OF_RESOURCES)
            return pdu.encode_response(
                pdu.C_STORE_RSP,
                message_id,
                sop_class,
                OUT_OF_RESOURCES,
                sop_instance,
                message.refusal,
            )
        if field_ == pdu.C_STORE_RQ and message.part10 is not None and message.size:
            data = message.part10.getvalue()  # the buffer itself, not a copy
            message.part10 = None
            status, comment = self.store.store_part10(data, title, host, transfers)
            return pdu.encode_response(
                pdu.C_STORE_RSP, message_id, sop_class, status, sop_instance, comment
            )
        raise pdu.ProtocolError(f"command {field_!r} is not served on a storage association")


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
