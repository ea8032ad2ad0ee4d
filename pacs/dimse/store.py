"""C-STORE service: one received data set -> ingest -> a C-STORE status (PS3.4 B.2.3).

Shared by the lean storage acceptor and the pynetdicom handlers; never raises.
"""

from __future__ import annotations

import logging

from pacs.audit.dimse import DimseAudit, Peer, StudyTransfers
from pacs.dimse import status
from pacs.dimse.part10 import part10
from pacs.dimse.policy import AEPolicy
from pacs.ingest import IngestOutcome, IngestService, Source, StoreStatus
from pacs.ingest.acceptance import AcceptanceWarning

log = logging.getLogger(__name__)

C_STORE_STATUS = {
    StoreStatus.STORED: status.SUCCESS,
    StoreStatus.DUPLICATE: status.SUCCESS,
    StoreStatus.REPLACED: status.SUCCESS,
    StoreStatus.CONFLICT_KEPT: status.COERCION_OF_DATA_ELEMENTS,
    StoreStatus.CONFLICT_REJECTED: status.DUPLICATE_SOP_INSTANCE,
    StoreStatus.IDENTITY_CONFLICT: status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    StoreStatus.QUARANTINED: status.COERCION_OF_DATA_ELEMENTS,
    StoreStatus.INVALID: status.CANNOT_UNDERSTAND,
    StoreStatus.SOP_CLASS_NOT_SUPPORTED: status.SOP_CLASS_NOT_SUPPORTED,
    StoreStatus.TOO_LARGE: status.OUT_OF_RESOURCES,
    StoreStatus.FAILED: status.OUT_OF_RESOURCES,
}


def warning_status(warnings: tuple[AcceptanceWarning, ...]) -> int:
    """The warning status of an object stored with acceptance warnings: 0xB007 when the
    data set is of another SOP Class than it was sent as, else 0xB000 (it is filed under
    its own SOP Instance UID, not the one it was sent as)."""
    if AcceptanceWarning.SOP_CLASS_UID_DIFFERS in warnings:
        return status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING
    return status.COERCION_OF_DATA_ELEMENTS


def store_status(outcome: IngestOutcome) -> tuple[int, str]:
    """The C-STORE status of an ingest outcome and its ErrorComment ("" on success)."""
    code = C_STORE_STATUS[outcome.status]
    if code == status.SUCCESS and outcome.warnings:
        return warning_status(outcome.warnings), "; ".join(outcome.warnings)[:64]
    return code, ("" if code == status.SUCCESS else error_comment(outcome))


def error_comment(outcome: IngestOutcome) -> str:
    """The ErrorComment (at most 64 characters) of a failure or warning: the reason, which
    for a quarantined object (0xB000, as the keep policy's conflicts) says so first."""
    if outcome.status is StoreStatus.QUARANTINED:
        return f"quarantined: {outcome.reason}"[:64]
    return outcome.reason[:64]


class StoreHandler:
    """Ingests C-STORE data sets of one worker process."""

    def __init__(
        self, ingest: IngestService, policy: AEPolicy, audit: DimseAudit | None = None
    ) -> None:
        self.ingest = ingest
        self.policy = policy
        self.audit = audit

    def transfers(self, calling_ae_title: str, host: str) -> StudyTransfers | None:
        """The audit record of one association's stores (None without an audit)."""
        if self.audit is None:
            return None
        organisation = self.policy.organisation(calling_ae_title, host)
        return self.audit.transfers(Peer(calling_ae_title.strip(), host, organisation))

    def store(
        self,
        dataset: bytes,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae_title: str,
        host: str,
        transfers: StudyTransfers | None = None,
    ) -> tuple[int, str]:
        """Ingest the data set exactly as received; return (status, error comment), noted
        in the association's ``transfers`` (audit) when given."""
        try:
            data = part10(
                dataset, sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae_title
            )
        except Exception:
            log.exception("C-STORE failed")
            if transfers is not None:
                transfers.add("", status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES, "internal error; nothing stored"
        return self.store_part10(data, calling_ae_title, host, transfers)

    def store_part10(
        self,
        data: bytes,
        calling_ae_title: str,
        host: str,
        transfers: StudyTransfers | None = None,
    ) -> tuple[int, str]:
        """Ingest a received object already framed as Part 10 (the file meta from the
        C-STORE-RQ); return (status, error comment), noted in ``transfers`` when given."""
        study = ""
        try:
            source = Source(
                channel="dimse",
                ae_title=calling_ae_title,
                host=host,
                organisation=self.policy.organisation(calling_ae_title, host),
            )
            outcome = self.ingest.store_part10(data, source)
            study = outcome.study_instance_uid
            code, comment = store_status(outcome)
        except Exception:
            log.exception("C-STORE failed")
            code, comment = status.OUT_OF_RESOURCES, "internal error; nothing stored"
        if transfers is not None:
            transfers.add(study, code)
        return code, comment
