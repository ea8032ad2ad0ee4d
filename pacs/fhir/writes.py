"""Writes of new FHIR resources in bulk: the resource, its history and its search index rows.

Shared by ``FhirStore`` (one resource) and transaction bundles (``PendingWrites``: every new
resource of a bundle in a few statements).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, insert

from pacs.fhir.indexer import IndexRows
from pacs.fhir.schema import (
    FhirDate,
    FhirReference,
    FhirResource,
    FhirResourceHistory,
    FhirString,
    FhirToken,
)

R = cast(Table, FhirResource.__table__)
H = cast(Table, FhirResourceHistory.__table__)
INDEX_TABLES = tuple(
    cast(Table, m.__table__) for m in (FhirToken, FhirReference, FhirDate, FhirString)
)
"""The search index tables: token, reference, date, string."""


class PendingWrites:
    """New resources of one transaction, inserted together by ``flush`` (a few statements
    instead of several per resource)."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], str, IndexRows]] = []

    def add(self, values: dict[str, Any], method: str, rows: IndexRows) -> None:
        """Queue one new resource (``fhir_resource`` values, history method, index rows)."""
        self.items.append((values, method, rows))

    def flush(self, conn: Connection) -> None:
        """Insert everything queued, on ``conn``."""
        if not self.items:
            return
        result = conn.execute(
            insert(R).returning(R.c.pk, sort_by_parameter_order=True),
            [values for values, _, _ in self.items],
        )
        pks = list(result.scalars())
        conn.execute(insert(H), [{**values, "method": method} for values, method, _ in self.items])
        insert_index(
            conn,
            [
                (pk, values["resource_type"], rows)
                for pk, (values, _, rows) in zip(pks, self.items, strict=True)
            ],
        )
        self.items = []


def insert_index(conn: Connection, items: list[tuple[int, str, IndexRows]]) -> None:
    """Insert the search index rows of resources ``(pk, type, rows)``."""
    token, reference, date, string = INDEX_TABLES
    batches: dict[Table, list[dict[str, Any]]] = {token: [], reference: [], date: [], string: []}
    for pk, rtype, rows in items:
        common = {"resource_pk": pk, "resource_type": rtype}
        batches[token] += [
            {**common, "param": p, "system": s, "code": c} for p, s, c in set(rows.tokens)
        ]
        batches[reference] += [
            {**common, "param": p, "target_type": t, "target_id": i}
            for p, t, i in set(rows.references)
        ]
        batches[date] += [
            {**common, "param": p, "low": lo, "high": hi} for p, lo, hi in set(rows.dates)
        ]
        batches[string] += [
            {**common, "param": p, "value": v, "exact": x} for p, v, x in set(rows.strings)
        ]
    for table, values in batches.items():
        if values:
            # RETURNING makes SQLAlchemy send multi-row INSERTs ("insertmanyvalues") instead
            # of one execution per row
            conn.execute(insert(table).returning(table.c.pk), values)
