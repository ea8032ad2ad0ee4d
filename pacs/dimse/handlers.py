"""DIMSE event handlers. They never raise into the network stack: every outcome is a status."""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs import metrics
from pacs.dimse.part10 import part10
from pacs.dimse.policy import AEPolicy
from pacs.ingest import IngestService, Source, StoreStatus

log = logging.getLogger(__name__)

SUCCESS = 0x0000
WARNING_COERCION = 0xB000
FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000

C_STORE_STATUS = {
    StoreStatus.STORED: SUCCESS,
    StoreStatus.DUPLICATE: SUCCESS,
    StoreStatus.REPLACED: SUCCESS,
    StoreStatus.CONFLICT_KEPT: WARNING_COERCION,
    StoreStatus.CONFLICT_REJECTED: FAILURE_DUPLICATE_SOP_INSTANCE,
    StoreStatus.INVALID: FAILURE_CANNOT_UNDERSTAND,
    StoreStatus.SOP_CLASS_MISMATCH: FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    StoreStatus.TOO_LARGE: FAILURE_OUT_OF_RESOURCES,
    StoreStatus.FAILED: FAILURE_OUT_OF_RESOURCES,
}


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def _peer(event: Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return requestor.ae_title.strip(), str(requestor.address)


class Handlers:
    """Handlers of one DICOM server process, bound to its ingest service and AE policy."""

    def __init__(self, ingest: IngestService, policy: AEPolicy) -> None:
        self.ingest = ingest
        self.policy = policy

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
        try:
            title, host = _peer(event)
            source = Source(
                channel="dimse",
                ae_title=title,
                host=host,
                organisation=self.policy.organisation(title, host),
            )
            request = cast(C_STORE, event.request)
            data = part10(
                cast(BytesIO, request.DataSet).getvalue(),
                str(request.AffectedSOPClassUID or ""),
                str(request.AffectedSOPInstanceUID or ""),
                str(event.context.transfer_syntax),
                title,
            )
            outcome = self.ingest.store_part10(data, source)
            code = C_STORE_STATUS[outcome.status]
            return _status(code, "" if code == SUCCESS else outcome.reason)
        except Exception:
            log.exception("C-STORE handler failed")
            return _status(FAILURE_OUT_OF_RESOURCES, "internal error; nothing stored")

    def bindings(self) -> list[tuple[Any, Any]]:
        """The (event, handler) pairs to bind on the association server."""
        return [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
        ]
