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

from pacs.dimse.find import answer_c_find, failure
from pacs.dimse.status import IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
from pacs.worklist import WorklistItem, WorklistQueryError, matches, response

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model - FIND."""

ItemSource = Callable[[Dataset], Iterable[WorklistItem]]
"""Scheduled items that may match a request (the source may pre-filter, never drop a match)."""


class WorklistService:
    """Answers MWL C-FIND requests from a source of worklist items."""

    def __init__(self, items: ItemSource) -> None:
        self.items = items

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND for the worklist: one pending response per item, then success."""
        request = cast(C_FIND, event.request)
        if str(request.AffectedSOPClassUID or "") != MODALITY_WORKLIST_FIND:
            yield failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unsupported SOP class")
            return
        yield from answer_c_find("MWL C-FIND", event, self._matches, WorklistQueryError)

    def _matches(self, identifier: Dataset) -> Iterator[Dataset]:
        for item in self.items(identifier):
            if matches(identifier, item):
                yield response(identifier, item)
