"""A lean acceptor for storage associations: Verification and C-STORE, nothing else.

pynetdicom runs an association on two threads joined by queues and a state machine, and
spends more CPU per C-STORE than the archive's whole ingest. An association whose proposed
abstract syntaxes are all storage SOP classes (or Verification) - what modalities open - is
served here on one thread: negotiation with pynetdicom's PDU classes and negotiation rules,
then a loop that reads whole PDUs, joins the PDV fragments and answers each C-STORE after the
ingest. Any other association (query/retrieve, ...) goes to pynetdicom unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

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
from pacs.dimse.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.dimse.policy import AEPolicy
from pacs.dimse.status import OUT_OF_RESOURCES, SUCCESS
from pacs.dimse.store import StoreHandler

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded


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
    fragments: list[memoryview] = field(default_factory=list)
    size: int = 0
    too_large: bool = False  # fragments beyond the size limit are read and dropped


class StorageAcceptor:
    """Serves storage associations for one worker process (one thread per association)."""

    def __init__(
        self,
        ae_title: str,
        contexts: list[PresentationContext],
        policy: AEPolicy,
        store: StoreHandler,
        network_timeout: float,
        max_associations: int,
    ) -> None:
        self.ae_title = ae_title
        self.contexts = contexts
        self.policy = policy
        self.store = store
        self.network_timeout = network_timeout
        self.max_associations = max_associations
        self.active = 0
        self._lock = threading.Lock()

    def serve(self, sock: socket.socket, host: str, closed: Callable[[], None]) -> None:
        """Run one association to its end (release, abort, timeout or error); never raises."""
        with self._lock:
            self.active += 1
        try:
            sock.settimeout(self.network_timeout)
            self._associate_and_serve(sock, host)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.warning("association from %s dropped: %s", host, exc or type(exc).__name__)
        except pdu.ProtocolError as exc:
            log.warning("association from %s aborted: %s", host, exc)
            _send_quietly(sock, pdu.a_abort(reason=2))
        except Exception:
            log.exception("association from %s failed; aborting", host)
            _send_quietly(sock, pdu.a_abort())
        finally:
            with self._lock:
                self.active -= 1
            sock.close()
            closed()

    def _associate_and_serve(self, sock: socket.socket, host: str) -> None:
        pdu_type, body = pdu.read_pdu(sock)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type:#04x}")
        request = decode_associate_rq(bytes([pdu_type, 0]) + len(body).to_bytes(4, "big") + body)
        title = str(request.calling_ae_title).strip()
        if not self.policy.is_allowed(title, host):
            metrics.ASSOCIATIONS.labels("refused").inc()
            log.warning("association from %s at %s refused by AE policy", title, host)
            sock.sendall(pdu.a_associate_rj(*REJECT_CALLING_AE))
            return
        if self.active > self.max_associations:
            metrics.ASSOCIATIONS.labels("busy").inc()
            sock.sendall(pdu.a_associate_rj(*REJECT_BUSY))
            return
        accepted = self._accept(sock, request)
        metrics.ASSOCIATIONS.labels("accepted").inc()
        transfers = self.store.transfers(title, host)
        try:
            self._data_phase(sock, accepted, title, host, transfers)
        finally:
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
        maximum.maximum_length_received = 0  # no limit: the peer sends the largest PDUs it can
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
        transfers: StudyTransfers | None = None,
    ) -> None:
        command_bytes = bytearray()
        message: _Message | None = None
        while True:
            pdu_type, body = pdu.read_pdu(sock)
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
                    if message is not None:
                        raise pdu.ProtocolError("command fragment while a data set was expected")
                    command_bytes += data
                    if not last:
                        continue
                    message = _Message(context_id, pdu.decode_command(bytes(command_bytes)))
                    command_bytes.clear()
                    if message.command.get(pdu.COMMAND_DATA_SET_TYPE) == pdu.NO_DATA_SET:
                        self._answer(sock, message, contexts, title, host, transfers)
                        message = None
                elif message is None or context_id != message.context_id:
                    raise pdu.ProtocolError("data set fragment without its command")
                else:
                    message.size += len(data)
                    if message.size > self.store.ingest.max_object_size:
                        message.too_large = True
                        message.fragments.clear()
                    else:
                        message.fragments.append(data)
                    if last:
                        self._answer(sock, message, contexts, title, host, transfers)
                        message = None

    def _answer(
        self,
        sock: socket.socket,
        message: _Message,
        contexts: dict[int, tuple[str, str]],
        title: str,
        host: str,
        transfers: StudyTransfers | None,
    ) -> None:
        command = message.command
        field_ = command.get(pdu.COMMAND_FIELD)
        message_id = int(command.get(pdu.MESSAGE_ID, 0))
        abstract_syntax, transfer_syntax = contexts[message.context_id]
        sop_class = str(command.get(pdu.AFFECTED_SOP_CLASS_UID, abstract_syntax))
        if field_ == pdu.C_ECHO_RQ:
            response = pdu.encode_response(pdu.C_ECHO_RSP, message_id, sop_class, SUCCESS)
        elif field_ == pdu.C_STORE_RQ and message.too_large:
            limit = self.store.ingest.max_object_size
            metrics.REJECTED.labels("dimse").inc()
            log.warning("C-STORE from %s refused: %d bytes > %d", title, message.size, limit)
            if transfers is not None:
                transfers.add("", OUT_OF_RESOURCES)
            response = pdu.encode_response(
                pdu.C_STORE_RSP,
                message_id,
                sop_class,
                OUT_OF_RESOURCES,
                str(command.get(pdu.AFFECTED_SOP_INSTANCE_UID, "")),
                f"object larger than {limit} bytes; nothing stored",
            )
        elif field_ == pdu.C_STORE_RQ and message.fragments:
            sop_instance = str(command.get(pdu.AFFECTED_SOP_INSTANCE_UID, ""))
            dataset = b"".join(message.fragments)
            message.fragments.clear()
            status, comment = self.store.store(
                dataset, sop_class, sop_instance, transfer_syntax, title, host, transfers
            )
            response = pdu.encode_response(
                pdu.C_STORE_RSP, message_id, sop_class, status, sop_instance, comment
            )
        else:
            raise pdu.ProtocolError(f"command {field_!r} is not served on a storage association")
        sock.sendall(pdu.p_data_command(message.context_id, response))


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
