"""Modality Performed Procedure Step SCP: N-CREATE and N-SET (PS3.4 F.7).

The state machine and what a step changes live in ``pacs.mpps.service``; this module maps
DIMSE requests onto it and its refusals onto statuses. Access: the calling AE's subject
(``pacs.dimse.policy.CallingAE``) must be permitted the service (``pacs.dimse.access``:
modality and system AEs), and the step's referral must be on its worklist (its
organisation's, ``pacs.security.fhir_scope.worklist_scope``); otherwise 0124 (refused: not
authorized). Every request is audited (``MPPS N-CREATE`` / ``MPPS N-SET``). It never raises
into the network stack and never logs patient identifiers.
"""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from pacs.audit.dimse import DimseAudit, Peer
from pacs.dimse.access import permitted
from pacs.dimse.policy import CallingAE
from pacs.dimse.status import SUCCESS
from pacs.mpps.service import NOT_AUTHORIZED, PROCESSING_FAILURE, MppsError, MppsService
from pacs.security.fhir_scope import worklist_scope
from pacs.security.subject import Subject

log = logging.getLogger(__name__)

MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
"""Modality Performed Procedure Step SOP Class."""


def _failure(status: int, comment: str, error_id: int | None = None) -> tuple[Dataset, None]:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    if error_id is not None:
        answer.ErrorID = error_id
    return answer, None


def _keys(dataset: Dataset | None) -> tuple[str, str]:
    """The PatientID and (first scheduled step's) StudyInstanceUID of a step, for the audit."""
    try:
        patient = str(dataset.get("PatientID", "") or "") if dataset is not None else ""
        steps = dataset.get("ScheduledStepAttributesSequence") if dataset is not None else None
        study = str(steps[0].get("StudyInstanceUID", "") or "") if steps else ""
    except Exception:  # a deferred element that does not decode
        return "", ""
    return patient[:64], study[:64]


class MppsHandler:
    """EVT_N_CREATE / EVT_N_SET handlers for the MPPS SOP Class."""

    def __init__(
        self, service: MppsService, callers: CallingAE, audit: DimseAudit | None = None
    ) -> None:
        self.service = service
        self.callers = callers
        self.audit = audit

    def on_n_create(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """N-CREATE: a new step IN PROGRESS; the attribute list is answered as stored."""
        request = cast(N_CREATE, event.request)
        uid = str(request.AffectedSOPInstanceUID or "") or str(generate_uid())
        attributes: Dataset | None = None
        subject: Subject | None = None
        answer: tuple[Dataset | int, Dataset | None]
        try:
            subject = self.callers.of(event)
            attributes = event.attribute_list
            decision = permitted(subject, "MPPS N-CREATE")
            if not decision:
                raise MppsError(decision.reason, NOT_AUTHORIZED)
            self.service.create(uid, attributes, subject.name, worklist_scope(subject))
            if not request.AffectedSOPInstanceUID:
                attributes.AffectedSOPInstanceUID = uid  # pynetdicom moves it to the response
            answer = SUCCESS, attributes
        except MppsError as exc:
            log.warning("MPPS N-CREATE %s refused: %s", uid, exc)
            answer = _failure(exc.status, str(exc), exc.error_id)
        except Exception:
            log.exception("MPPS N-CREATE %s failed", uid)
            answer = _failure(PROCESSING_FAILURE, "the archive could not store the step")
        self._record("MPPS N-CREATE", subject, answer, attributes, uid, "create")
        return answer

    def on_n_set(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """N-SET: update a step IN PROGRESS (to COMPLETED or DISCONTINUED)."""
        request = cast(N_SET, event.request)
        uid = str(request.RequestedSOPInstanceUID or "")
        subject: Subject | None = None
        answer: tuple[Dataset | int, Dataset | None]
        try:
            subject = self.callers.of(event)
            decision = permitted(subject, "MPPS N-SET")
            if not decision:
                raise MppsError(decision.reason, NOT_AUTHORIZED)
            modifications = event.modification_list
            self.service.set(uid, modifications, subject.name, worklist_scope(subject))
            answer = SUCCESS, modifications
        except MppsError as exc:
            log.warning("MPPS N-SET %s refused: %s", uid, exc)
            answer = _failure(exc.status, str(exc), exc.error_id)
        except Exception:
            log.exception("MPPS N-SET %s failed", uid)
            answer = _failure(PROCESSING_FAILURE, "the archive could not update the step")
        self._record("MPPS N-SET", subject, answer, None, uid, "update")
        return answer

    def _record(
        self,
        service: str,
        subject: Subject | None,
        answer: tuple[Dataset | int, Dataset | None],
        attributes: Dataset | None,
        uid: str,
        action: str,
    ) -> None:
        """The audit record of one request (never raises)."""
        if self.audit is None or subject is None:
            return
        try:
            if attributes is None:
                attributes = self.service.attributes(uid)
            patient, study = _keys(attributes)
            status = answer[0]
            outcome = int(status.Status) if isinstance(status, Dataset) else int(status)
            peer = Peer(subject.name, subject.client_address, subject.organisation)
            self.audit.record(
                service, peer, outcome, patient=patient, study=study, detail=uid, action=action
            )
        except Exception:
            log.exception("%s %s: the audit record was not written", service, uid)
