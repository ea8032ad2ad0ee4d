"""Modality Worklist SCP: C-FIND of the Modality Worklist Information Model - FIND.

Items come from active FHIR ServiceRequests (``pacs.worklist``); this module maps the
request onto them and their outcomes onto DIMSE statuses. It never raises into the network
stack and never logs patient identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from pacs.dimse.find import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from pacs.worklist import WorklistItem, WorklistQueryError, matches, response

log = logging.getLogger(__name__)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model - FIND."""

ItemSource = Callable[[Dataset], Iterable[WorklistItem]]
"""Scheduled items that may match a request (the source may pre-filter, never drop a match)."""


def _failure(code: int, comment: str) -> tuple[Dataset, None]:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status, None


class WorklistService:
    """Answers MWL C-FIND requests from a source of worklist items."""

    def __init__(self, items: ItemSource) -> None:
        self.items = items

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND for the worklist: one pending response per item, then success."""
        request = cast(C_FIND, event.request)
        if str(request.AffectedSOPClassUID or "") != MODALITY_WORKLIST_FIND:
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unsupported SOP class")
            return
        try:
            identifier = event.identifier
        except Exception:
            log.warning("MWL C-FIND identifier could not be decoded")
            yield _failure(UNABLE_TO_PROCESS, "identifier could not be decoded")
            return
        found = 0
        try:
            for item in self.items(identifier):
                if not matches(identifier, item):
                    continue
                if event.is_cancelled:
                    log.info("MWL C-FIND cancelled after %d matches", found)
                    yield CANCEL, None
                    return
                found += 1
                yield PENDING, response(identifier, item)
        except WorklistQueryError as exc:
            log.info("MWL C-FIND refused: %s", exc)
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
            return
        except SQLAlchemyError:
            log.exception("MWL C-FIND failed in the index")
            yield _failure(OUT_OF_RESOURCES, "index unavailable")
            return
        except Exception:
            log.exception("MWL C-FIND failed")
            yield _failure(UNABLE_TO_PROCESS, "query could not be processed")
            return
        log.info("MWL C-FIND: %d matches", found)
        yield SUCCESS, None
