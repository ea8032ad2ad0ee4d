"""``FhirStore``: versioned FHIR resources in the index database, with search indexes.

Every write runs in one database transaction: the current row (``fhir_resource``), a history
row, and the search index rows change together. Writers of the same resource are serialised
by a row lock (PostgreSQL) or the single SQLite writer; conditional operations take a
transaction-scoped advisory lock on their criteria so two concurrent ones cannot both create.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    delete,
    false,
    func,
    insert,
    not_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from pacs.fhir import search as fhir_search
from pacs.fhir.errors import (
    InvalidResource,
    PreconditionFailed,
    ResourceConflict,
    ResourceGone,
    ResourceNotFound,
    UnprocessableResource,
    UnsupportedResourceType,
)
from pacs.fhir.indexer import extract, local_references
from pacs.fhir.limits import DEFAULT_MAX_BUNDLE_ENTRIES, DEFAULT_MAX_RESOURCES, ResourceBudget
from pacs.fhir.resources import Bundle
from pacs.fhir.schema import (
    FhirReference,
)
from pacs.fhir.searchparams import SEARCH_PARAMS
from pacs.fhir.validation import load_stored, validate
from pacs.fhir.values import escape_search_value, parse_reference
from pacs.fhir.writes import INDEX_TABLES, H, PendingWrites, R, insert_index
from pacs.index.engine import WRITE, writer_turn

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"?(\d+)"?$')


@dataclass(frozen=True, slots=True)
class Written:
    """The stored resource and the HTTP status of the write (201 created, 200 otherwise)."""

    resource: dict[str, Any]
    status: int


def check_type(resource_type: str) -> None:
    """Raise ``UnsupportedResourceType`` unless the server implements ``resource_type``."""
    if resource_type not in SEARCH_PARAMS:
        raise UnsupportedResourceType(f"resource type {resource_type!r} is not supported")


def check_id(resource_id: str) -> None:
    """Raise ``InvalidResource`` unless ``resource_id`` is a valid FHIR id."""
    if not _ID.match(resource_id):
        raise InvalidResource(f"{resource_id!r} is not a valid id", expression=["id"])


def parse_etag(value: str) -> int:
    """The version number of an ``If-Match`` value such as ``W/"3"``."""
    match = _ETAG.match(value.strip())
    if not match:
        raise InvalidResource(f'If-Match {value!r} is not a version ETag like W/"1"')
    return int(match[1])


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without server-managed metadata, for change detection."""
    body = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    meta = {
        k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")
    }
    if meta:
        body["meta"] = meta
    return body


class FhirStore:
    """FHIR resources with versions, history and search, stored in the index database."""

    def __init__(
        self,
        engine: Engine,
        base_url: str = "",
        default_count: int = 20,
        max_resources: int = DEFAULT_MAX_RESOURCES,
        max_bundle_entries: int = DEFAULT_MAX_BUNDLE_ENTRIES,
    ) -> None:
        self.engine = engine
        self.default_count = default_count
        self.max_resources = max_resources  # per response (search, batch, $everything)
        self.max_bundle_entries = max_bundle_entries
        self.writer = engine.execution_options(**WRITE)
        self.base_url = base_url.rstrip("/")

    # ------------------------------------------------------------ transactions

    @contextmanager
    def write_transaction(self) -> Iterator[Connection]:
        """One write transaction (SQLite: queued writer, ``BEGIN IMMEDIATE``)."""
        try:
            with writer_turn(self.engine), self.writer.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise ResourceConflict(f"concurrent write conflict: {exc.orig}") from None

    def _lock(self, conn: Connection, key: str) -> None:
        """Serialise conditional operations on the same criteria (PostgreSQL advisory lock)."""
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode())})

    # ------------------------------------------------------------ reads

    def read(
        self, resource_type: str, resource_id: str, scope: ColumnElement[bool] | None = None
    ) -> dict[str, Any]:
        """The current version; 404 if unknown (or outside ``scope``, the caller's reach:
        ``pacs.security.fhir_scope``), 410 if deleted."""
        check_type(resource_type)
        with self.engine.connect() as conn:
            return self.tx_read(conn, resource_type, resource_id, scope)

    def tx_read(
        self,
        conn: Connection,
        resource_type: str,
        resource_id: str,
        scope: ColumnElement[bool] | None = None,
    ) -> dict[str, Any]:
        query = select(R.c.content, R.c.deleted, R.c.version_id).where(
            R.c.resource_type == resource_type, R.c.id == resource_id
        )
        row = conn.execute(query if scope is None else query.where(scope)).first()
        name = f"{resource_type}/{resource_id}"
        return _live(row, f"{name} is not known", f"{name} was deleted")

    def outside(
        self, resource_type: str, resource_id: str, scope: ColumnElement[bool] | None
    ) -> bool:
        """Whether the resource is stored (current row, deleted or not) but outside
        ``scope``; callers answer 404 for it, as for an unknown one."""
        if scope is None:
            return False
        with self.engine.connect() as conn:
            found = conn.execute(
                select(R.c.pk).where(
                    R.c.resource_type == resource_type, R.c.id == resource_id, not_(scope)
                )
            ).first()
        return found is not None

    def vread(self, resource_type: str, resource_id: str, version: str | int) -> dict[str, Any]:
        """One version from the history; 404 if unknown, 410 if that version is a deletion."""
        check_type(resource_type)
        with self.engine.connect() as conn:
            return self.tx_vread(conn, resource_type, resource_id, version)

    def tx_vread(
        self, conn: Connection, resource_type: str, resource_id: str, version: str | int
    ) -> dict[str, Any]:
        """``vread`` on ``conn``."""
        try:
            number = int(version)
        except ValueError:
            raise ResourceNotFound(f"version {version!r} is not known") from None
        row = conn.execute(
            select(H.c.content, H.c.deleted).where(
                H.c.resource_type == resource_type,
                H.c.id == resource_id,
                H.c.version_id == number,
            )
        ).first()
        name = f"{resource_type}/{resource_id}"
        gone = f"{name} was deleted in version {version}"
        return _live(row, f"{name}/_history/{version} is not known", gone)

    def history(
        self, resource_type: str, resource_id: str, base_url: str | None = None
    ) -> dict[str, Any]:
        """The instance history: a ``history`` Bundle, newest version first; at most
        ``max_resources`` versions (``total`` counts them all)."""
        check_type(resource_type)
        base = self.base_url if base_url is None else base_url.rstrip("/")
        versions = (H.c.resource_type == resource_type, H.c.id == resource_id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(H.c.version_id, H.c.last_updated, H.c.deleted, H.c.method, H.c.content)
                .where(*versions)
                .order_by(H.c.version_id.desc())
                .limit(self.max_resources)
            ).all()
            total = len(rows)
            if total == self.max_resources:
                total = conn.execute(
                    select(func.count()).select_from(H).where(*versions)
                ).scalar_one()
        if not rows:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        entries = []
        for row in rows:
            url = f"{resource_type}/{resource_id}"
            entry: dict[str, Any] = {
                "fullUrl": f"{base}/{url}",
                "request": {
                    "method": row.method,
                    "url": url if row.method != "POST" else resource_type,
                },
                "response": {
                    "status": "410 Gone"
                    if row.deleted
                    else ("201 Created" if row.version_id == 1 else "200 OK"),
                    "etag": f'W/"{row.version_id}"',
                    "lastModified": _instant(
                        row.last_updated
                        if row.last_updated.tzinfo
                        else row.last_updated.replace(tzinfo=UTC)
                    ),
                },
            }
            if not row.deleted:
                entry["resource"] = load_stored(row.content)
            entries.append(entry)
        return {
            "resourceType": "Bundle",
            "type": "history",
            "total": total,
            "link": [{"relation": "self", "url": f"{base}/{resource_type}/{resource_id}/_history"}],
            "entry": entries,
        }

    def search(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        base_url: str | None = None,
        scope: ColumnElement[bool] | None = None,
    ) -> Bundle:
        """A ``searchset`` Bundle; unknown parameters raise when ``strict``, else are reported.
        ``scope`` (the caller's reach, ``pacs.security.fhir_scope``) is part of the query;
        with it ``_include``/``_revinclude`` are not followed (reported as ignored)."""
        with self.engine.connect() as conn:
            return self.tx_search(
                conn, resource_type, params, strict=strict, base_url=base_url, scope=scope
            )

    def tx_search(
        self,
        conn: Connection,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        base_url: str | None = None,
        budget: ResourceBudget | None = None,
        scope: ColumnElement[bool] | None = None,
    ) -> Bundle:
        """``search`` on ``conn``; its resources are spent from ``budget`` (a batch's), or
        from a budget of ``max_resources`` of its own."""
        check_type(resource_type)
        request = fhir_search.parse(resource_type, params, strict, self.default_count)
        if scope is not None:
            request.restrict(scope)
        base = self.base_url if base_url is None else base_url.rstrip("/")
        spent = budget if budget is not None else ResourceBudget(self.max_resources)
        return fhir_search.execute(conn, request, base, spent)

    def process_bundle(self, bundle: dict[str, Any], base_url: str | None = None) -> Bundle:
        """A ``transaction`` (atomic) or ``batch`` Bundle; its response Bundle."""
        from pacs.fhir.bundle import process

        return process(self, bundle, self.base_url if base_url is None else base_url.rstrip("/"))

    # ------------------------------------------------------------ writes

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> dict[str, Any]:
        """Create with a new id; with ``if_none_exist``, return the one match instead."""
        return self.create_written(resource, if_none_exist).resource

    def create_written(self, resource: dict[str, Any], if_none_exist: str | None = None) -> Written:
        """``create`` that also says whether it created (201) or found the match (200)."""
        with self.write_transaction() as conn:
            written = self.tx_create(conn, resource, if_none_exist)
            self.check_references(conn, written.resource)
            return written

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Replace (or create with this id; the body's ``id`` must be ``resource_id``);
        ``if_match`` (``W/"n"``) guards the version."""
        return self.update_written(resource_type, resource_id, resource, if_match).resource

    def update_written(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        if_match: str | None = None,
    ) -> Written:
        """``update`` that also says whether it created (201) or updated (200)."""
        with self.write_transaction() as conn:
            written = self.tx_update(conn, resource_type, resource_id, resource, if_match)
            self.check_references(conn, written.resource)
            return written

    def delete(self, resource_type: str, resource_id: str) -> None:
        """Delete (a new, deleted version); 409 while other resources refer to it."""
        with self.write_transaction() as conn:
            self.tx_delete(conn, resource_type, resource_id)

    def upsert_by_identifier(
        self, resource: dict[str, Any], system: str, value: str
    ) -> dict[str, Any]:
        """Create, or update the one resource with identifier ``system|value`` (its id kept).

        An update that changes nothing but metadata writes no new version. Several matches
        raise ``PreconditionFailed``.
        """
        with self.write_transaction() as conn:
            written = self.tx_upsert(conn, resource, system, value)
            self.check_references(conn, written.resource)
            return written.resource

    # ------------------------------------------------------------ writes inside a transaction

    def tx_create(
        self,
        conn: Connection,
        resource: dict[str, Any],
        if_none_exist: str | None = None,
        *,
        new_id: str | None = None,
        pending: PendingWrites | None = None,
    ) -> Written:
        """Create inside ``conn``'s transaction (references are checked by the caller).

        ``new_id``: an id the caller generated for it (a UUID no resource has); ``pending``:
        queue the insert there instead of writing it now."""
        rtype = _type_of(resource)
        if if_none_exist:
            query = parse_qsl(if_none_exist.split("?", 1)[-1], keep_blank_values=True)
            self._lock(conn, f"{rtype}?{if_none_exist}")
            ids = fhir_search.matching_ids(conn, rtype, query)
            if len(ids) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist {if_none_exist!r} matches several {rtype} resources"
                )
            if ids:
                return Written(self.tx_read(conn, rtype, ids[0]), 200)
        rid = new_id or str(uuid.uuid4())
        return self._write(conn, rtype, rid, resource, "POST", None, fresh=True, pending=pending)

    def tx_update(
        self,
        conn: Connection,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        if_match: str | None = None,
    ) -> Written:
        """Update inside ``conn``'s transaction (references are checked by the caller)."""
        check_type(resource_type)
        check_id(resource_id)
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            validate(resource, resource_type)
        if resource.get("id") != resource_id:
            raise InvalidResource(
                f"the resource id {resource.get('id')!r} does not match the URL id {resource_id!r}",
                expression=[f"{resource_type}.id"],
            )
        expected = parse_etag(if_match) if if_match else None
        return self._write(conn, resource_type, resource_id, resource, "PUT", expected)

    def tx_upsert(
        self, conn: Connection, resource: dict[str, Any], system: str, value: str
    ) -> Written:
        """``upsert_by_identifier`` inside ``conn``'s transaction."""
        rtype = _type_of(resource)
        self._lock(conn, f"{rtype}?identifier={system}|{value}")
        token = f"{escape_search_value(system)}|{escape_search_value(value)}"
        ids = fhir_search.matching_ids(conn, rtype, [("identifier", token)])
        if len(ids) > 1:
            raise PreconditionFailed(f"several {rtype} resources have the identifier")
        if not ids:
            rid = str(uuid.uuid4())
            return self._write(conn, rtype, rid, resource, "POST", None, fresh=True)
        current = self.tx_read(conn, rtype, ids[0])
        if _content(current) == _content(resource):
            return Written(current, 200)
        body = {**resource, "id": ids[0]}
        return self._write(conn, rtype, ids[0], body, "PUT", None)

    def tx_delete(self, conn: Connection, resource_type: str, resource_id: str) -> None:
        """Delete inside ``conn``'s transaction; nothing to do if unknown or already deleted."""
        check_type(resource_type)
        row = self._current(conn, resource_type, resource_id)
        if row is None or row.deleted:
            return
        ref = FhirReference.__table__
        referrer = conn.execute(
            select(R.c.resource_type, R.c.id)
            .join(ref, ref.c.resource_pk == R.c.pk)
            .where(
                ref.c.target_type == resource_type,
                ref.c.target_id == resource_id,
                R.c.deleted == false(),
            )
            .limit(1)
        ).first()
        if referrer is not None:
            by = f"{referrer.resource_type}/{referrer.id}"
            raise ResourceConflict(f"{resource_type}/{resource_id} is referred to by {by}")
        now = _now()
        version = row.version_id + 1
        conn.execute(
            update(R)
            .where(R.c.pk == row.pk)
            .values(version_id=version, last_updated=now, deleted=True)
        )
        conn.execute(
            insert(H).values(
                resource_type=resource_type,
                id=resource_id,
                version_id=version,
                last_updated=now,
                deleted=True,
                method="DELETE",
                content="",
            )
        )
        self._clear_index(conn, row.pk)

    def check_references(self, conn: Connection, *resources: dict[str, Any]) -> None:
        """Raise ``UnprocessableResource`` if a local reference of one of ``resources`` points
        at no (or a deleted) resource; external absolute URLs and contained references are not
        checked. One query for all of them."""
        found: list[tuple[str, str, str, tuple[str, str]]] = []
        for resource in resources:
            for path, ref in local_references(resource):
                target = self._local_target(ref)
                if target is not None:
                    found.append((resource["resourceType"], path, ref, target))
        if not found:
            return
        wanted = sorted({target for *_, target in found})
        present = {
            (row.resource_type, row.id)
            for row in conn.execute(
                select(R.c.resource_type, R.c.id).where(
                    tuple_(R.c.resource_type, R.c.id).in_(wanted), R.c.deleted == false()
                )
            )
        }
        for rtype, path, ref, target in found:
            if target not in present:
                raise UnprocessableResource(
                    f"{path}: reference {ref!r} points at no resource",
                    expression=[f"{rtype}.{path}"],
                )

    def _local_target(self, ref: str) -> tuple[str, str] | None:
        if "://" in ref and not (self.base_url and ref.startswith(self.base_url + "/")):
            return None
        return parse_reference(ref)

    # ------------------------------------------------------------ the write itself

    def _current(self, conn: Connection, resource_type: str, resource_id: str) -> Any:
        query = select(R.c.pk, R.c.version_id, R.c.deleted).where(
            R.c.resource_type == resource_type, R.c.id == resource_id
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).first()

    def _write(
        self,
        conn: Connection,
        rtype: str,
        rid: str,
        resource: dict[str, Any],
        method: str,
        expected_version: int | None,
        *,
        fresh: bool = False,
        pending: PendingWrites | None = None,
    ) -> Written:
        """Write a new version. ``fresh``: ``rid`` was just generated, so no row can exist;
        such creates go to ``pending`` (when given) to be inserted together."""
        check_type(rtype)
        body = dict(resource)  # only top-level keys (id, meta) change; nested values are shared
        body["id"] = rid
        now = _now()
        row = None if fresh else self._current(conn, rtype, rid)
        if expected_version is not None and (row is None or row.version_id != expected_version):
            have = "none" if row is None else f'W/"{row.version_id}"'
            raise PreconditionFailed(
                f'If-Match W/"{expected_version}" does not match the current version ({have})'
            )
        version = 1 if row is None else row.version_id + 1
        meta = {
            k: v for k, v in body.get("meta", {}).items() if k not in ("versionId", "lastUpdated")
        }
        body["meta"] = {"versionId": str(version), "lastUpdated": _instant(now), **meta}
        validate(body, rtype)
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        try:
            rows = extract(body, self._local_target)
        except ValueError as exc:
            raise InvalidResource(str(exc)) from None
        values = {
            "resource_type": rtype,
            "id": rid,
            "version_id": version,
            "last_updated": now,
            "deleted": False,
            "content": content,
        }
        if row is None and pending is not None:
            pending.add(values, method, rows)
            return Written(body, 201)
        if row is None:
            pk = conn.execute(insert(R).values(**values).returning(R.c.pk)).scalar_one()
        else:
            pk = row.pk
            conn.execute(update(R).where(R.c.pk == pk).values(**values))
            self._clear_index(conn, pk)
        conn.execute(insert(H).values(**values, method=method))
        insert_index(conn, [(pk, rtype, rows)])
        return Written(body, 201 if row is None or row.deleted else 200)

    def _clear_index(self, conn: Connection, pk: int) -> None:
        for table in INDEX_TABLES:
            conn.execute(delete(table).where(table.c.resource_pk == pk))


def _live(row: Row[*tuple[Any, ...]] | None, unknown: str, deleted: str) -> dict[str, Any]:
    """The resource a ``content, deleted`` row holds; ``ResourceNotFound(unknown)`` without a
    row, ``ResourceGone(deleted)`` when it records a deletion."""
    if row is None:
        raise ResourceNotFound(unknown)
    if row.deleted:
        raise ResourceGone(deleted)
    return load_stored(row.content)


def _type_of(resource: Any) -> str:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        validate(resource)
    rtype: str = resource["resourceType"]
    if rtype not in SEARCH_PARAMS:
        validate(resource)
        raise UnsupportedResourceType(f"resource type {rtype!r} is not supported")
    return rtype
