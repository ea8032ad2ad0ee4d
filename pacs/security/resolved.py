"""The consent inputs of a restricted reach resolved once per request: the DICOM PatientIDs
of the patients whose consent refuses an organisation, and of those withholding their record
from other organisations.

They depend on the FHIR store alone, which appends a history row on every create, update and
delete: the newest history row (its pk and time, one index lookup) versions them, so a
process-wide cache answers until the next FHIR write and a Consent written or withdrawn
applies from the next request on. A set larger than :data:`MAX_LISTED` is not listed (the
query keeps the subquery instead).
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.fhir.schema import FhirResourceHistory
from pacs.security.consent import identifying, refusing, withholding

MAX_LISTED = 1000
"""The most PatientIDs a statement carries as a list."""

_HISTORY = FhirResourceHistory.__table__
_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], tuple[Any, tuple[str, ...] | None]] = {}
"""(database, organisation or '' for the withholding patients) -> (FHIR version, PatientIDs)."""


_VERSION = select(_HISTORY.c.pk, _HISTORY.c.last_updated).order_by(_HISTORY.c.pk.desc()).limit(1)
"""The newest FHIR history row (built once: a Core statement from the statement cache)."""


def _version(session: Session) -> Any:
    row = session.connection().execute(_VERSION).first()
    return None if row is None else tuple(row)


def _listed(session: Session, query: Any) -> tuple[str, ...] | None:
    values = session.scalars(query.limit(MAX_LISTED + 1)).all()
    return None if len(values) > MAX_LISTED else tuple(sorted(set(values)))


def consent_lists(
    session: Session, organisation: str
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(PatientIDs refusing ``organisation``, PatientIDs withholding their record); None for a
    set too large to list."""
    database = str(session.get_bind().engine.url)
    version = _version(session)
    found = []
    for name in (organisation, ""):
        key = (database, name)
        with _LOCK:
            cached = _CACHE.get(key)
        if cached is None or cached[0] != version:
            query = identifying(refusing(name) if name else withholding())
            cached = (version, _listed(session, query))
            with _LOCK:
                _CACHE[key] = cached
        found.append(cached[1])
    return found[0], found[1]
