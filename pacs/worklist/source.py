"""The worklist items that may match a request: active ServiceRequests from the FHIR store.

The store pre-filters by status, accession number and (widened by a day, since DICOM dates
are wall-clock) the scheduled date; ``pacs.worklist.matching`` then decides every key.
A referral leaves the worklist when a modality reports performing it (MPPS, see
``pacs.mpps``), when its report is signed (``completed``, see ``pacs.emr.review``), or, with
``remove_on_arrival``, as soon as a study with its accession number is in the archive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Engine, select, tuple_

from pacs.emr.identifiers import token_search_value
from pacs.fhir.errors import ResourceGone, ResourceNotFound
from pacs.fhir.resources import found
from pacs.fhir.schema import FhirResource
from pacs.fhir.store import FhirStore
from pacs.index.models import RemoteAE, Study
from pacs.mpps.tables import PerformedProcedureStep
from pacs.query.matching import values_of
from pacs.worklist.items import WorklistItem, item_from_service_request
from pacs.worklist.matching import step_of

log = logging.getLogger(__name__)

PAGE = 500
"""ServiceRequests read per store search."""
_PREFETCHED = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "Organization", "Encounter", "Device"}
)


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
    token = token_search_value(accession[0]) if len(accession) == 1 else None
    if token and not any(c in accession[0] for c in "*?\\"):
        params.append(("identifier", token))
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

    def __init__(
        self,
        store: FhirStore,
        engine: Engine,
        remove_on_arrival: bool = False,
        station_organisations: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``station_organisations``: AE title -> further organisations whose items that AE
        is scheduled for (``PACS_WORKLIST_STATION_ORGANISATIONS``), besides its registry
        entry's organisation."""
        self.store = store
        self.engine = engine
        self.remove_on_arrival = remove_on_arrival
        self.station_organisations = dict(station_organisations or {})

    def __call__(
        self, identifier: Dataset, scope: ColumnElement[bool] | None = None
    ) -> Iterator[WorklistItem]:
        """Items of the active ServiceRequests within ``scope`` (the caller's reach, None:
        all) that pass the store's pre-filter."""
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
                titles[organisation] += sorted(
                    title
                    for title, organisations in self.station_organisations.items()
                    if organisation in organisations and title not in titles[organisation]
                )
            return titles[organisation]

        params = [*prefilter(identifier), ("_count", str(PAGE))]  # _sort costs more than it gives
        offset = 0
        while True:
            bundle = self.store.search(
                "ServiceRequest", [*params, ("_offset", str(offset))], scope=scope
            )
            entries = found(bundle)
            self._prefetch(entries, cache)
            items = [item_from_service_request(r, resolve, ae_titles_of) for r in entries]
            arrived = self._arrived([i.accession_number for i in items if i is not None])
            held = self._performed([i.service_request_id for i in items if i is not None])
            for item in items:
                if (
                    item is not None
                    and item.accession_number not in arrived
                    and item.service_request_id not in held
                ):
                    yield item
            if not any(link.get("relation") == "next" for link in bundle.get("link") or []):
                return
            offset += PAGE

    def _performed(self, service_request_ids: list[str]) -> set[str]:
        """The requests a modality has reported performing (MPPS in progress or completed)."""
        if not service_request_ids:
            return set()
        with self.engine.connect() as conn:
            rows = conn.scalars(
                select(PerformedProcedureStep.service_request_id).where(
                    PerformedProcedureStep.service_request_id.in_(sorted(set(service_request_ids))),
                    PerformedProcedureStep.holds_step.is_(True),
                )
            )
            return set(rows)

    def _arrived(self, accession_numbers: list[str]) -> set[str]:
        """The accession numbers that already have a study (with ``remove_on_arrival``)."""
        if not self.remove_on_arrival or not accession_numbers:
            return set()
        with self.engine.connect() as conn:
            rows = conn.scalars(
                select(Study.accession_number)
                .where(Study.accession_number.in_(sorted(set(accession_numbers))))
                .distinct()
            )
            return set(rows)

    def _prefetch(
        self, requests: list[dict[str, Any]], cache: dict[tuple[str, str], dict[str, Any] | None]
    ) -> None:
        """Read the resources a page of requests refers to in one query (not one per item)."""
        wanted: set[tuple[str, str]] = set()
        for request in requests:
            refs = [request.get("subject"), request.get("requester"), request.get("encounter")]
            refs += request.get("performer") or []
            for ref in refs:
                kind, _, rid = str((ref or {}).get("reference") or "").partition("/")
                if kind in _PREFETCHED and rid and (kind, rid) not in cache:
                    wanted.add((kind, rid))
        if not wanted:
            return
        table = FhirResource.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(table.c.resource_type, table.c.id, table.c.content).where(
                    tuple_(table.c.resource_type, table.c.id).in_(sorted(wanted)),
                    table.c.deleted.is_(False),
                )
            )
            for row in rows:
                cache[(row.resource_type, row.id)] = json.loads(row.content)
