"""The worklist items that may match a request: active ServiceRequests from the FHIR store.

The store pre-filters by status, accession number and (widened by a day, since DICOM dates
are wall-clock) the scheduled date; ``pacs.worklist.matching`` then decides every key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, select

from pacs.fhir.errors import ResourceGone, ResourceNotFound
from pacs.fhir.store import FhirStore
from pacs.index.models import RemoteAE
from pacs.query.matching import values_of
from pacs.worklist.items import WorklistItem, item_from_service_request
from pacs.worklist.matching import step_of

log = logging.getLogger(__name__)

PAGE = 500
"""ServiceRequests read per store search."""


def _day(text: str, shift: int) -> str | None:
    digits = text.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) + timedelta(days=shift)
    except ValueError:
        return None
    return day.isoformat()


def prefilter(identifier: Dataset) -> list[tuple[str, str]]:
    """FHIR search parameters that keep every ServiceRequest the identifier may match."""
    params = [("status", "active")]
    accession = values_of(identifier.get("AccessionNumber"))
    if len(accession) == 1 and not any(c in accession[0] for c in "*?\\"):
        params.append(("identifier", accession[0]))
    dates = values_of(step_of(identifier).get("ScheduledProcedureStepStartDate"))
    if len(dates) == 1:
        low, dash, high = dates[0].partition("-")
        if not dash:
            high = low
        start, end = _day(low, -1), _day(high, 1)
        if start:
            params.append(("occurrence", f"ge{start}"))
        if end:
            params.append(("occurrence", f"le{end}"))
    return params


class WorklistSource:
    """Reads worklist items for MWL C-FIND requests."""

    def __init__(self, store: FhirStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine

    def __call__(self, identifier: Dataset) -> Iterator[WorklistItem]:
        """Items of the active ServiceRequests that pass the store's pre-filter."""
        cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        titles: dict[str, list[str]] = {}

        def resolve(resource_type: str, resource_id: str) -> dict[str, Any] | None:
            key = (resource_type, resource_id)
            if key not in cache:
                try:
                    cache[key] = self.store.read(resource_type, resource_id)
                except (ResourceNotFound, ResourceGone):
                    cache[key] = None
            return cache[key]

        def ae_titles_of(organisation: str) -> list[str]:
            if organisation not in titles:
                with self.engine.connect() as conn:
                    rows = conn.scalars(
                        select(RemoteAE.title)
                        .where(RemoteAE.organisation == organisation)
                        .order_by(RemoteAE.title)
                    )
                    titles[organisation] = list(rows)
            return titles[organisation]

        params = [*prefilter(identifier), ("_sort", "occurrence"), ("_count", str(PAGE))]
        offset = 0
        while True:
            bundle = self.store.search("ServiceRequest", [*params, ("_offset", str(offset))])
            entries = [e["resource"] for e in bundle.get("entry") or [] if "resource" in e]
            for request in entries:
                item = item_from_service_request(request, resolve, ae_titles_of)
                if item is not None:
                    yield item
            if not any(link.get("relation") == "next" for link in bundle.get("link") or []):
                return
            offset += PAGE
