"""pynetdicom event handlers, for associations the lean storage acceptor does not serve.

They never raise into the network stack: every outcome is a status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs import metrics
from pacs.dimse.commitment import CommitmentHandler
from pacs.dimse.find import FindService
from pacs.dimse.mpps import MppsHandler
from pacs.dimse.policy import AEPolicy
from pacs.dimse.retrieve import RetrieveService
from pacs.dimse.status import SUCCESS, UNABLE_TO_PROCESS
from pacs.dimse.store import StoreHandler
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
        self.mpps: MppsHandler | None = None
        self.commitment: CommitmentHandler | None = None

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
        )
        status = Dataset()
        status.Status = code
        if comment:
            status.ErrorComment = comment
        return status

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """C-FIND: the Modality Worklist SCP or the Query/Retrieve SCP, by SOP class."""
        sop_class = str(event.request.AffectedSOPClassUID or "")
        service = self.worklist if sop_class == MODALITY_WORKLIST_FIND else self.find
        if service is None:
            status = Dataset()
            status.Status = UNABLE_TO_PROCESS  # this process serves no such C-FIND
            yield status, None
            return
        yield from service.on_c_find(event)

    def bindings(self) -> list[tuple[Any, Any]]:
        """The (event, handler) pairs to bind on the association server."""
        return [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
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
            (evt.EVT_C_MOVE, self.retrieve.on_c_move),
            (evt.EVT_C_GET, self.retrieve.on_c_get),
        ]
