"""C-FIND SCP of the Patient Root and Study Root Query/Retrieve information models.

Matching and response building live in ``pacs.query`` (shared with QIDO-RS); this module
only maps a C-FIND request onto it and its outcomes onto DIMSE statuses. It never raises
into the network stack and never logs patient identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pacs.config import PnMatching, Settings
from pacs.query import QueryError, QueryModel, find
from pacs.query.matching import DEFAULT_OPTIONS, MatchOptions

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
"""Patient Root Query/Retrieve Information Model - FIND."""
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND."""
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
"""Abstract syntaxes the C-FIND SCP serves."""

PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

_MODELS = {PATIENT_ROOT_FIND: QueryModel.PATIENT_ROOT, STUDY_ROOT_FIND: QueryModel.STUDY_ROOT}


def _failure(code: int, comment: str) -> tuple[Dataset, None]:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status, None


def match_options(settings: Settings) -> MatchOptions:
    """The C-FIND matching options the settings choose (``PACS_PN_COMPONENT_MATCHING``)."""
    return MatchOptions(pn_matching=PnMatching(settings.pn_component_matching))


class FindService:
    """Answers C-FIND requests from the index, with one session per request."""

    def __init__(
        self, sessions: sessionmaker[Session], options: MatchOptions = DEFAULT_OPTIONS
    ) -> None:
        self.sessions = sessions
        self.options = options

    def on_c_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND: one pending response per match, then success (or cancel/failure)."""
        request = cast(C_FIND, event.request)
        model = _MODELS.get(str(request.AffectedSOPClassUID or ""))
        if model is None:
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "unsupported SOP class")
            return
        try:
            identifier = event.identifier
        except Exception:
            log.warning("C-FIND identifier could not be decoded")
            yield _failure(UNABLE_TO_PROCESS, "identifier could not be decoded")
            return
        matches = 0
        try:
            with self.sessions() as session:
                for match in find(session, identifier, model, options=self.options):
                    if event.is_cancelled:
                        log.info("C-FIND cancelled after %d matches", matches)
                        yield CANCEL, None
                        return
                    matches += 1
                    yield PENDING, match
        except QueryError as exc:
            log.info("C-FIND refused: %s", type(exc).__name__)
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
            return
        except SQLAlchemyError:
            log.exception("C-FIND failed in the index")
            yield _failure(OUT_OF_RESOURCES, "index unavailable")
            return
        except Exception:
            log.exception("C-FIND failed")
            yield _failure(UNABLE_TO_PROCESS, "query could not be processed")
            return
        log.info("C-FIND %s: %d matches", model.value, matches)
        yield SUCCESS, None
