"""C-FIND SCP of the Patient Root and Study Root Query/Retrieve information models.

Matching and response building live in ``pacs.query`` (shared with QIDO-RS); this module
only maps a C-FIND request onto it and its outcomes onto DIMSE statuses. It never raises
into the network stack and never logs patient identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pacs.config import PnMatching, Settings
from pacs.dimse.access import permitted
from pacs.dimse.policy import CallingAE
from pacs.dimse.status import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from pacs.query import QueryError, QueryModel, find
from pacs.query.matching import DEFAULT_OPTIONS, MatchOptions
from pacs.security.imaging import imaging_scope

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
"""Patient Root Query/Retrieve Information Model - FIND."""
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND."""
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
"""Abstract syntaxes the C-FIND SCP serves."""


_MODELS = {PATIENT_ROOT_FIND: QueryModel.PATIENT_ROOT, STUDY_ROOT_FIND: QueryModel.STUDY_ROOT}


def match_options(settings: Settings) -> MatchOptions:
    """The C-FIND matching options the settings choose (``PACS_PN_COMPONENT_MATCHING``)."""
    return MatchOptions(pn_matching=PnMatching(settings.pn_component_matching))


class FindService:
    """Answers C-FIND requests from the index, with one session per request, within the
    calling AE's reach (``pacs.dimse.policy.CallingAE``; filtered in the query)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        callers: CallingAE,
        options: MatchOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.sessions = sessions
        self.callers = callers
        self.options = options

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND: one pending response per match, then success (or cancel/failure)."""
        request = cast(C_FIND, event.request)
        model = _MODELS.get(str(request.AffectedSOPClassUID or ""))
        if model is None:
            yield failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unsupported SOP class")
            return
        yield from answer_c_find(
            f"C-FIND {model.value}", event, lambda ids: self._matches(model, ids, event), QueryError
        )

    def _matches(self, model: QueryModel, identifier: Dataset, event: Event) -> Iterator[Dataset]:
        subject = self.callers.of(event)
        if not permitted(subject, "C-FIND"):
            return
        with self.sessions() as session:
            scope = imaging_scope(subject, session)
            yield from find(session, identifier, model, options=self.options, scope=scope)


def answer_c_find(
    label: str,
    event: Event,
    search: Callable[[Dataset], Iterable[Dataset]],
    refused: type[Exception],
) -> Iterator[tuple[Any, Dataset | None]]:
    """The responses of one C-FIND (Query/Retrieve or Modality Worklist): a pending response
    per match of ``search`` until C-CANCEL, then success; an undecodable identifier, a
    ``refused`` query and index failures answered with their status, never raised."""
    try:
        identifier = event.identifier
    except Exception:
        log.warning("%s identifier could not be decoded", label)
        yield failure(UNABLE_TO_PROCESS, "identifier could not be decoded")
        return
    found = 0
    try:
        for match in search(identifier):
            if event.is_cancelled:
                log.info("%s cancelled after %d matches", label, found)
                yield CANCEL, None
                return
            found += 1
            yield PENDING, match
    except refused as exc:
        log.info("%s refused: %s", label, type(exc).__name__)
        yield failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        return
    except SQLAlchemyError:
        log.exception("%s failed in the index", label)
        yield failure(OUT_OF_RESOURCES, "index unavailable")
        return
    except Exception:
        log.exception("%s failed", label)
        yield failure(UNABLE_TO_PROCESS, "query could not be processed")
        return
    log.info("%s: %d matches", label, found)
    yield SUCCESS, None


def failure(code: int, comment: str) -> tuple[Dataset, None]:
    """A failure response: the status and its ErrorComment (at most 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status, None
