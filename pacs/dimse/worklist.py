"""Modality Worklist SCP: C-FIND of the Modality Worklist Information Model - FIND.

Items come from active FHIR ServiceRequests (``pacs.worklist``); this module maps the
request onto them and their outcomes onto DIMSE statuses. It never raises into the network
stack and never logs patient identifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from sqlalchemy import ColumnElement

from pacs.dimse.access import permitted
from pacs.dimse.find import answer_c_find, failure
from pacs.dimse.policy import CallingAE
from pacs.dimse.status import IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
from pacs.security.fhir_scope import worklist_scope
from pacs.worklist import WorklistItem, WorklistQueryError, matches, response

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model - FIND."""

ItemSource = Callable[[Dataset, ColumnElement[bool] | None], Iterable[WorklistItem]]
"""Scheduled items that may match a request, within a reach over FHIR ServiceRequests
(``pacs.security.fhir_scope.worklist_scope``; the source may pre-filter, never drop a match)."""


class WorklistService:
    """Answers MWL C-FIND requests from a source of worklist items: the calling AE's
    organisation's (``pacs.dimse.policy.CallingAE``)."""

    def __init__(self, items: ItemSource, callers: CallingAE) -> None:
        self.items = items
        self.callers = callers

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND for the worklist: one pending response per item, then success."""
        request = cast(C_FIND, event.request)
        if str(request.AffectedSOPClassUID or "") != MODALITY_WORKLIST_FIND:
            yield failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unsupported SOP class")
            return
        yield from answer_c_find(
            "MWL C-FIND", event, lambda ids: self._matches(ids, event), WorklistQueryError
        )

    def _matches(self, identifier: Dataset, event: Event) -> Iterator[Dataset]:
        subject = self.callers.of(event)
        if not permitted(subject, "MWL C-FIND"):
            return
        for item in self.items(identifier, worklist_scope(subject)):
            if matches(identifier, item):
                yield response(identifier, item)
