"""``Patient/$everything``: the patient's case file in one Bundle.

The Patient, every resource that refers to it (Encounter, ServiceRequest, ImagingStudy,
DiagnosticReport, Observation, ...), every Provenance that targets one of those, and the
Devices, Practitioners, PractitionerRoles, Organizations and Endpoints they refer to. It reads
the reference index of the FHIR store (``fhir_reference``), so it follows every local
reference, not only the ones that are search parameters.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from sqlalchemy import Connection, select, tuple_

from pacs.fhir.errors import InvalidSearch
from pacs.fhir.limits import ResourceBudget
from pacs.fhir.resources import Bundle, BundleEntry, Resource
from pacs.fhir.schema import FhirReference, FhirResource
from pacs.fhir.searchparams import SEARCH_PARAMS
from pacs.fhir.store import FhirStore

REFERENCED_TYPES = ("Device", "Practitioner", "PractitionerRole", "Organization", "Endpoint")
"""Types of the resources pulled in because the case refers to them (search mode include)."""
_CHUNK = 500

R = FhirResource.__table__
REF = FhirReference.__table__


def _referring(
    conn: Connection, targets: list[tuple[str, str]], types: set[str] | None
) -> list[Any]:
    """Current rows of the resources with a reference to one of ``targets``."""
    rows: dict[int, Any] = {}
    for start in range(0, len(targets), _CHUNK):
        chunk = targets[start : start + _CHUNK]
        query = (
            select(R.c.pk, R.c.resource_type, R.c.id, R.c.content)
            .join(REF, REF.c.resource_pk == R.c.pk)
            .where(tuple_(REF.c.target_type, REF.c.target_id).in_(chunk), R.c.deleted.is_(False))
        )
        if types is not None:
            query = query.where(R.c.resource_type.in_(sorted(types)))
        for row in conn.execute(query):
            rows.setdefault(row.pk, row)
    return list(rows.values())


def _referenced(conn: Connection, pks: list[int], types: tuple[str, ...]) -> list[Any]:
    """Current rows of the resources of ``types`` that the resources ``pks`` refer to."""
    targets: set[tuple[str, str]] = set()
    for start in range(0, len(pks), _CHUNK):
        query = select(REF.c.target_type, REF.c.target_id).where(
            REF.c.resource_pk.in_(pks[start : start + _CHUNK]), REF.c.target_type.in_(types)
        )
        targets.update((row.target_type, row.target_id) for row in conn.execute(query))
    rows = []
    ordered = sorted(targets)
    for start in range(0, len(ordered), _CHUNK):
        query = select(R.c.pk, R.c.resource_type, R.c.id, R.c.content).where(
            tuple_(R.c.resource_type, R.c.id).in_(ordered[start : start + _CHUNK]),
            R.c.deleted.is_(False),
        )
        rows += list(conn.execute(query))
    return rows


def everything(
    store: FhirStore, patient_id: str, types: set[str] | None = None, base_url: str | None = None
) -> Bundle:
    """The ``searchset`` Bundle of ``Patient/<patient_id>/$everything`` (``types``: the
    ``_type`` filter; the Patient itself is always there). Raises the store's 404/410."""
    unknown = sorted((types or set()) - set(SEARCH_PARAMS))
    if unknown:
        raise InvalidSearch(f"_type: {', '.join(unknown)} is not a supported resource type")
    patient = store.read("Patient", patient_id)
    base = (store.base_url if base_url is None else base_url).rstrip("/")
    with store.engine.connect() as conn:
        case = _referring(conn, [("Patient", patient_id)], None)
        case = [row for row in case if row.resource_type != "Provenance"]
        provenance = _referring(conn, [(r.resource_type, r.id) for r in case], {"Provenance"})
        matched = case + provenance
        referenced = _referenced(conn, [r.pk for r in matched], REFERENCED_TYPES)
    entries = [_entry(base, patient, "match")]
    seen = {("Patient", patient_id)}
    sections: tuple[tuple[list[Any], Literal["match", "include"]], ...] = (
        (matched, "match"),
        (referenced, "include"),
    )
    chosen: list[tuple[Any, Literal["match", "include"]]] = []
    for rows, mode in sections:
        for row in sorted(rows, key=lambda r: (r.resource_type, r.id)):
            if (row.resource_type, row.id) in seen:
                continue
            if types is not None and row.resource_type not in types:
                continue
            seen.add((row.resource_type, row.id))
            chosen.append((row, mode))
    ResourceBudget(store.max_resources).take(1 + len(chosen))  # before any is parsed
    entries += [_entry(base, json.loads(row.content), mode) for row, mode in chosen]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": sum(1 for e in entries if e["search"]["mode"] == "match"),
        "link": [{"relation": "self", "url": f"{base}/Patient/{patient_id}/$everything"}],
        "entry": entries,
    }


def _entry(base: str, resource: Resource, mode: Literal["match", "include"]) -> BundleEntry:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }
