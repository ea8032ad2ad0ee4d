"""pynetdicom event handlers, for associations the lean storage acceptor does not serve.

They never raise into the network stack: every outcome is a status.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs import metrics
from pacs.audit.dimse import DimseAudit, Peer, StudyTransfers
from pacs.dimse.commitment import CommitmentHandler
from pacs.dimse.find import FindService
from pacs.dimse.mpps import MppsHandler
from pacs.dimse.policy import AEPolicy
from pacs.dimse.retrieve import RetrieveService
from pacs.dimse.status import SUCCESS, UNABLE_TO_PROCESS
from pacs.dimse.store import StoreHandler
from pacs.dimse.tls import ae_matches_certificate
from pacs.dimse.worklist import MODALITY_WORKLIST_FIND, WorklistService

log = logging.getLogger(__name__)


def _peer(event: Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return requestor.ae_title.strip(), str(requestor.address)


class Handlers:
    """Handlers of one DICOM worker process, bound to its C-STORE service and AE policy."""

    def __init__(
        self, store: StoreHandler, policy: AEPolicy, retrieve: RetrieveService | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.find: FindService | None = None
        self.worklist: WorklistService | None = None
        self.retrieve = retrieve
        self.audit: DimseAudit | None = None
        self._transfers: dict[int, StudyTransfers] = {}  # association -> its C-STOREs
        self.certificate_aes: dict[str, str] | None = None
        """With ``dicom_tls_match_ae``: extra title -> certificate name pairs; None: no check."""
        self.mpps: MppsHandler | None = None
        self.commitment: CommitmentHandler | None = None

    def _peer(self, event: Event) -> Peer:
        title, host = _peer(event)
        return Peer(title, host, self.policy.organisation(title, host))

    def _audited(
        self, service: str, event: Event, responses: Iterator[Any], action: str = "read"
    ) -> Iterator[Any]:
        """``responses``, recorded in the audit trail once they end."""
        if self.audit is None:
            return responses
        return self.audit.responses(
            service, self._peer(event), lambda: event.identifier, responses, action
        )

    def on_closed(self, event: Event) -> None:
        """Write the C-STORE audit records of an association that ended."""
        transfers = self._transfers.pop(id(event.assoc), None)
        if transfers is not None:
            transfers.close()

    def on_requested(self, event: Event) -> None:
        """On a TLS connection with ``dicom_tls_match_ae``: reject (A-ASSOCIATE-RJ, calling AE
        not recognised) a calling AE title that is not its client certificate's."""
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if self.certificate_aes is None or not isinstance(sock, ssl.SSLSocket):
            return
        primitive = event.assoc.requestor.primitive
        title = str(primitive.calling_ae_title if primitive else "").strip()
        if ae_matches_certificate(title, sock.getpeercert(), self.certificate_aes):
            return
        metrics.ASSOCIATIONS.labels("refused").inc()
        log.warning("association from %s refused: not the AE of its TLS certificate", title)
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # as pynetdicom's own rejection: returns once the RJ is sent

    def on_accepted(self, event: Event) -> None:
        """Abort an association whose (title, address) pair is not on the allow-list."""
        title, host = _peer(event)
        if self.policy.is_allowed(title, host):
            metrics.ASSOCIATIONS.labels("accepted").inc()
            return
        metrics.ASSOCIATIONS.labels("refused").inc()
        log.warning("association from %s at %s refused by AE policy; aborting", title, host)
        event.assoc.abort()

    def on_c_echo(self, event: Event) -> int:
        """C-ECHO: always success once associated."""
        return SUCCESS

    def on_c_store(self, event: Event) -> Dataset:
        """C-STORE: ingest the bytes as received; success only when durable and indexed."""
        title, host = _peer(event)
        request = cast(C_STORE, event.request)
        code, comment = self.store.store(
            cast(BytesIO, request.DataSet).getvalue(),
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
            str(event.context.transfer_syntax),
            title,
            host,
            self._association_transfers(event),
        )
        status = Dataset()
        status.Status = code
        if comment:
            status.ErrorComment = comment
        return status

    def _association_transfers(self, event: Event) -> StudyTransfers | None:
        if self.audit is None:
            return None
        key = id(event.assoc)
        if key not in self._transfers:
            self._transfers[key] = self.audit.transfers(self._peer(event))
        return self._transfers[key]

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """C-FIND: the Modality Worklist SCP or the Query/Retrieve SCP, by SOP class."""
        sop_class = str(event.request.AffectedSOPClassUID or "")
        worklist = sop_class == MODALITY_WORKLIST_FIND
        yield from self._audited(
            "MWL C-FIND" if worklist else "C-FIND", event, self._find(event, worklist), "query"
        )

    def _find(self, event: Event, worklist: bool) -> Iterator[tuple[Any, Dataset | None]]:
        service = self.worklist if worklist else self.find
        if service is None:
            status = Dataset()
            status.Status = UNABLE_TO_PROCESS  # this process serves no such C-FIND
            yield status, None
            return
        yield from service.on_c_find(event)

    def on_c_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE, audited."""
        assert self.retrieve is not None
        yield from self._audited("C-MOVE", event, self.retrieve.on_c_move(event))

    def on_c_get(self, event: Event) -> Iterator[Any]:
        """C-GET, audited."""
        assert self.retrieve is not None
        yield from self._audited("C-GET", event, self.retrieve.on_c_get(event))

    def bindings(self) -> list[tuple[Any, Any]]:
        """The (event, handler) pairs to bind on the association server."""
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            *([(evt.EVT_C_FIND, self.on_c_find)] if self.find or self.worklist else []),
            *self._retrieve_bindings(),
            *self._normalized_bindings(),
        ]

    def _normalized_bindings(self) -> list[tuple[Any, Any]]:
        """MPPS (N-CREATE, N-SET) and Storage Commitment (N-ACTION), when served."""
        bindings: list[tuple[Any, Any]] = []
        if self.mpps is not None:
            bindings += [
                (evt.EVT_N_CREATE, self.mpps.on_n_create),
                (evt.EVT_N_SET, self.mpps.on_n_set),
            ]
        if self.commitment is not None:
            bindings.append((evt.EVT_N_ACTION, self.commitment.on_n_action))
        return bindings

    def _retrieve_bindings(self) -> list[tuple[Any, Any]]:
        """C-MOVE and C-GET, when this process serves retrieves."""
        if self.retrieve is None:
            return []
        return [
            (evt.EVT_C_MOVE, self.on_c_move),
            (evt.EVT_C_GET, self.on_c_get),
        ]
