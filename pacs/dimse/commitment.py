"""Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION (Action Type 1, Request Storage Commitment) is answered at once; the references
are then checked (``pacs.commitment.verify``: durable, same SOP Class, SHA-256 as recorded)
on a thread, and the result is sent as an N-EVENT-REPORT (Event Type 1: all committed, 2:
failures exist) on the same association while the requestor keeps it open, else on a new
association to the address registered for the requestor's AE title (``pacs ae add``), the
archive proposing the SCP role (SCP/SCU Role Selection). Handlers never raise into the
network stack.

Access: the calling AE's subject (``pacs.dimse.policy.CallingAE``) must be permitted the
service (``pacs.dimse.access``: those who may store), else the N-ACTION is refused 0124 (not
authorized); references outside its reach (another organisation's instances) are listed as
failed with 0112 (no such object instance), as unknown ones are. Each request is audited
(``Storage Commitment N-ACTION``) once its result is known.
"""

from __future__ import annotations

import logging
import threading
from typing import cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import build_role
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy import Engine, select

from pacs.audit import dimse as dimse_audit
from pacs.commitment import CommitmentResult, Reference, verify
from pacs.config import Settings
from pacs.dimse.access import permitted
from pacs.dimse.policy import CallingAE
from pacs.dimse.scu import Peer, archive_ae
from pacs.dimse.status import SUCCESS
from pacs.index.models import RemoteAE
from pacs.security.imaging import imaging_scope
from pacs.security.subject import Subject
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
"""Storage Commitment Push Model SOP Class."""
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""Its well-known SOP Instance."""
REQUEST_STORAGE_COMMITMENT = 1
ALL_COMMITTED, FAILURES_EXIST = 1, 2
NO_SUCH_ACTION_TYPE = 0x0123
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_OBJECT_INSTANCE = 0x0112
NOT_AUTHORIZED = 0x0124
SERVICE = "Storage Commitment N-ACTION"
SAME_ASSOCIATION_TIMEOUT = 10.0
"""Seconds to wait for the N-EVENT-REPORT response on the requestor's association (it may be
releasing it meanwhile; then the report goes on a new association)."""


def event_information(
    transaction_uid: str, result: CommitmentResult, ae_title: str
) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of a commitment result."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.RetrieveAETitle = ae_title
    committed = []
    for reference in result.committed:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        committed.append(item)
    failed = []
    for reference, reason in result.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        item.FailureReason = reason
        failed.append(item)
    if committed:
        info.ReferencedSOPSequence = Sequence(committed)
    if failed:
        info.FailedSOPSequence = Sequence(failed)
    return (FAILURES_EXIST if failed else ALL_COMMITTED), info


def _references(info: Dataset) -> list[Reference]:
    return [
        Reference(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
        for i in info.ReferencedSOPSequence
    ]


class CommitmentHandler:
    """EVT_N_ACTION for the Storage Commitment Push Model."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: ObjectStore,
        callers: CallingAE,
        audit: dimse_audit.DimseAudit | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.callers = callers
        self.audit = audit

    def on_n_action(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """Accept a commitment request; the answer follows as an N-EVENT-REPORT."""
        request = cast(N_ACTION, event.request)
        if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION_TYPE, None
        if str(request.RequestedSOPInstanceUID or "") != STORAGE_COMMITMENT_INSTANCE:
            return NO_SUCH_OBJECT_INSTANCE, None
        try:
            info = event.action_information
            transaction_uid = str(info.TransactionUID)
            references = _references(info)
        except Exception as exc:  # missing or malformed Action Information
            log.warning("storage commitment request refused: %s", exc)
            status = Dataset()
            status.Status = INVALID_ARGUMENT_VALUE
            status.ErrorComment = "TransactionUID and ReferencedSOPSequence are required"
            return status, None
        try:
            subject = self.callers.of(event)
        except Exception:
            log.exception("storage commitment: the calling AE could not be resolved")
            return PROCESSING_FAILURE, None
        decision = permitted(subject, SERVICE)
        if not decision:
            log.warning("storage commitment from %s refused: %s", subject.name, decision.reason)
            self._record(subject, NOT_AUTHORIZED, f"transaction={transaction_uid} refused")
            return NOT_AUTHORIZED, None
        threading.Thread(
            target=self._report,
            args=(event.assoc, subject, transaction_uid, references),
            name="storage-commitment",
            daemon=True,
        ).start()
        return SUCCESS, None

    def _record(self, subject: Subject, outcome: int, detail: str) -> None:
        if self.audit is not None:
            peer = dimse_audit.Peer(subject.name, subject.client_address, subject.organisation)
            self.audit.record(SERVICE, peer, outcome, detail=detail, action="read")

    def _report(
        self,
        assoc: Association,
        subject: Subject,
        transaction_uid: str,
        references: list[Reference],
    ) -> None:
        title = subject.name
        try:
            result = verify(self.engine, self.store, references, imaging_scope(subject))
            failure = result.failed[0][1] if result.failed else SUCCESS
            counts = f"committed={len(result.committed)} failed={len(result.failed)}"
            self._record(subject, failure, f"transaction={transaction_uid} {counts}")
            event_type, info = event_information(transaction_uid, result, self.settings.ae_title)
            log.info(
                "storage commitment %s for %s: %d committed, %d failed",
                transaction_uid,
                title,
                len(result.committed),
                len(result.failed),
            )
            if _still_open(assoc) and _send(assoc, event_type, info, SAME_ASSOCIATION_TIMEOUT):
                return
            peer = self._registered(title)
            if peer is None:
                log.error(
                    "storage commitment %s: the association with %s is closed and the AE is "
                    "not registered (pacs ae add); the result is not delivered",
                    transaction_uid,
                    title,
                )
                return
            self._send_new_association(peer, event_type, info)
        except Exception:
            log.exception("storage commitment %s for %s failed", transaction_uid, title)

    def _registered(self, title: str) -> Peer | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(RemoteAE.title, RemoteAE.host, RemoteAE.port).where(RemoteAE.title == title)
            ).first()
        return cast(Peer, row) if row is not None else None

    def _send_new_association(self, peer: Peer, event_type: int, info: Dataset) -> None:
        ae = archive_ae(self.settings)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.title, ext_neg=[role])
        if not assoc.is_established:
            log.error("storage commitment: cannot associate with %s", peer.title)
            return
        try:
            _send(assoc, event_type, info)
        finally:
            assoc.release()


def _still_open(assoc: Association) -> bool:
    """Established and the peer has not asked to release it (an A-RELEASE-RQ waiting in the
    upper layer's queue, peeked at without taking it)."""
    return assoc.is_established and not isinstance(assoc.dul.peek_next_pdu(), A_RELEASE)


def _send(assoc: Association, event_type: int, info: Dataset, timeout: float | None = None) -> bool:
    """Send the N-EVENT-REPORT; True when the peer answered success (within ``timeout``
    seconds, else the association's DIMSE timeout; no answer aborts the association)."""
    previous = assoc.dimse_timeout
    if timeout is not None:
        assoc.dimse_timeout = min(timeout, previous or timeout)
    try:
        status, _reply = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
    finally:
        assoc.dimse_timeout = previous
    code = status.get("Status") if status is not None else None
    delivered: bool = code == SUCCESS
    if not delivered:
        log.warning("storage commitment N-EVENT-REPORT answered %s", code)
    return delivered
