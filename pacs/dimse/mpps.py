"""Modality Performed Procedure Step SCP: N-CREATE and N-SET (PS3.4 F.7).

The state machine and what a step changes live in ``pacs.mpps.service``; this module maps
DIMSE requests onto it and its refusals onto statuses. It never raises into the network stack
and never logs patient identifiers.
"""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from pacs.dimse.status import SUCCESS
from pacs.mpps.service import PROCESSING_FAILURE, MppsError, MppsService

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


class MppsHandler:
    """EVT_N_CREATE / EVT_N_SET handlers for the MPPS SOP Class."""

    def __init__(self, service: MppsService) -> None:
        self.service = service

    def on_n_create(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """N-CREATE: a new step IN PROGRESS; the attribute list is answered as stored."""
        request = cast(N_CREATE, event.request)
        uid = str(request.AffectedSOPInstanceUID or "") or str(generate_uid())
        try:
            attributes = event.attribute_list
            self.service.create(uid, attributes, event.assoc.requestor.ae_title.strip())
        except MppsError as exc:
            log.warning("MPPS N-CREATE %s refused: %s", uid, exc)
            return _failure(exc.status, str(exc), exc.error_id)
        except Exception:
            log.exception("MPPS N-CREATE %s failed", uid)
            return _failure(PROCESSING_FAILURE, "the archive could not store the step")
        if not request.AffectedSOPInstanceUID:
            attributes.AffectedSOPInstanceUID = uid  # pynetdicom moves it to the response
        return SUCCESS, attributes

    def on_n_set(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """N-SET: update a step IN PROGRESS (to COMPLETED or DISCONTINUED)."""
        request = cast(N_SET, event.request)
        uid = str(request.RequestedSOPInstanceUID or "")
        try:
            modifications = event.modification_list
            self.service.set(uid, modifications)
        except MppsError as exc:
            log.warning("MPPS N-SET %s refused: %s", uid, exc)
            return _failure(exc.status, str(exc), exc.error_id)
        except Exception:
            log.exception("MPPS N-SET %s failed", uid)
            return _failure(PROCESSING_FAILURE, "the archive could not update the step")
        return SUCCESS, modifications
