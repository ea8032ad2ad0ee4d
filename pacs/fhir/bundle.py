"""``transaction`` and ``batch`` Bundles (R4 3.1.0.11).

Entries run in the order DELETE, POST, PUT, GET. ``urn:uuid:`` fullUrls of created (and
conditionally created or updated) resources become ``Type/id`` before anything is written, and
every reference to them in the Bundle is rewritten; conditional references (``Patient?identifier=
...``) resolve to their one match. A transaction runs in one database transaction: any failing
entry fails it all (its status and OperationOutcome, with the entry's path). A batch runs each
entry in its own transaction and reports each outcome in the response.

Bounds: at most ``fhir_max_bundle_entries`` entries (413 before any runs), and the resources
the reads and searches answer share one budget of ``fhir_max_response_resources`` for the
whole response (an entry past it fails with 422 too-costly).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from sqlalchemy import Connection

from pacs.fhir import search as fhir_search
from pacs.fhir.errors import (
    FhirError,
    InvalidResource,
    PayloadTooLarge,
    PreconditionFailed,
    UnprocessableResource,
)
from pacs.fhir.limits import ResourceBudget
from pacs.fhir.resources import Bundle, BundleEntry, EntryResponse
from pacs.fhir.searchparams import SEARCH_PARAMS
from pacs.fhir.validation import validate
from pacs.fhir.writes import PendingWrites

if TYPE_CHECKING:
    from pacs.fhir.store import FhirStore

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


@dataclass
class Entry:
    """One request of the Bundle, parsed."""

    index: int
    method: str
    resource_type: str
    resource_id: str | None  # Type/id URLs
    query: list[tuple[str, str]] | None  # Type?query URLs
    history: str | None  # Type/id/_history/vid
    resource: dict[str, Any] | None
    full_url: str
    if_none_exist: str | None
    if_match: str | None
    existing: bool = False  # a conditional create that matched
    written: dict[str, Any] | None = field(default=None)


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _relative(url: str, base: str) -> str:
    if base and url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    return url.lstrip("/")


def _parse_entry(index: int, raw: Any, base: str) -> Entry:
    where = f"Bundle.entry[{index}]"
    request = raw.get("request") if isinstance(raw, dict) else None
    if not isinstance(request, dict):
        raise InvalidResource(f"{where}.request is missing", expression=[f"{where}.request"])
    method = request.get("method")
    url = request.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise InvalidResource(
            f"{where}.request needs a method (GET, POST, PUT, DELETE) and a url",
            expression=[f"{where}.request"],
        )
    path, _, query_text = _relative(url, base).partition("?")
    parts = path.split("/")
    rtype = parts[0]
    if rtype not in SEARCH_PARAMS:
        raise InvalidResource(
            f"{where}.request.url: resource type {rtype!r} is not supported",
            expression=[f"{where}.request.url"],
        )
    rid = parts[1] if len(parts) >= 2 else None
    history = parts[3] if len(parts) == 4 and parts[2] == "_history" else None
    if (len(parts) > 2 and history is None) or len(parts) > 4:
        raise InvalidResource(f"{where}.request.url {url!r} is not supported")
    query = parse_qsl(query_text, keep_blank_values=True) if "?" in url else None
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise InvalidResource(f"{where}.resource is missing", expression=[f"{where}.resource"])
        if resource.get("resourceType") != rtype:
            try:
                validate(resource, rtype)  # raises: the type does not match the URL
            except FhirError as exc:
                raise _located(exc, index) from None
    if method == "POST" and rid is not None:
        raise InvalidResource(f"{where}: POST goes to the type URL, not {url!r}")
    if method in ("PUT", "DELETE") and rid is None and query is None:
        raise InvalidResource(f"{where}: {method} needs Type/id or Type?criteria")
    return Entry(
        index=index,
        method=method,
        resource_type=rtype,
        resource_id=rid,
        query=query,
        history=history,
        resource=resource if isinstance(resource, dict) else None,
        full_url=raw.get("fullUrl", "") if isinstance(raw.get("fullUrl"), str) else "",
        if_none_exist=request.get("ifNoneExist"),
        if_match=request.get("ifMatch"),
    )


def _located(exc: FhirError, index: int) -> FhirError:
    """``exc`` with its OperationOutcome pointing into ``Bundle.entry[index]``."""
    for issue in exc.outcome.get("issue", []):
        issue["diagnostics"] = f"Bundle.entry[{index}]: {issue.get('diagnostics', '')}"
        if "expression" in issue:
            issue["expression"] = [
                f"Bundle.entry[{index}].resource" + e[e.index(".") :]
                if "." in e and e[:1].isupper()
                else f"Bundle.entry[{index}].{e}"
                for e in issue["expression"]
            ]
    return exc


def _rewrite(node: Any, resolve: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: resolve(v) if k == "reference" and isinstance(v, str) else _rewrite(v, resolve)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, resolve) for v in node]
    return node


class _Run:
    """One Bundle being processed: the id map and the entries."""

    def __init__(self, store: FhirStore, base: str, entries: list[Entry]) -> None:
        self.store = store
        self.base = base
        self.entries = entries
        self.ids: dict[str, str] = {}  # fullUrl -> Type/id
        self.budget = ResourceBudget(store.max_resources)  # resources the response may carry

    def assign(self, conn: Connection, entry: Entry) -> None:
        """Choose the id an entry writes to and record its fullUrl."""
        if entry.method == "POST":
            if entry.if_none_exist:
                query = parse_qsl(entry.if_none_exist.split("?", 1)[-1], keep_blank_values=True)
                found = fhir_search.matching_ids(conn, entry.resource_type, query)
                if len(found) > 1:
                    raise PreconditionFailed(
                        f"ifNoneExist {entry.if_none_exist!r} matches several resources"
                    )
                entry.existing = bool(found)
                entry.resource_id = found[0] if found else None
            entry.resource_id = entry.resource_id or str(uuid.uuid4())
        elif entry.method == "PUT" and entry.query is not None:
            found = fhir_search.matching_ids(conn, entry.resource_type, entry.query)
            if len(found) > 1:
                raise PreconditionFailed("the conditional update matches several resources")
            entry.resource_id = found[0] if found else str(uuid.uuid4())
        if entry.full_url and entry.method in ("POST", "PUT"):
            self.ids[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"

    def resolver(self, conn: Connection) -> Any:
        def resolve(ref: str) -> str:
            if ref in self.ids:
                return self.ids[ref]
            if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
                raise UnprocessableResource(f"reference {ref!r} is not a fullUrl in the Bundle")
            rtype, sep, query_text = ref.partition("?")
            if sep and rtype in SEARCH_PARAMS:
                found = fhir_search.matching_ids(
                    conn, rtype, parse_qsl(query_text, keep_blank_values=True)
                )
                if len(found) != 1:
                    raise PreconditionFailed(
                        f"conditional reference {ref!r} matches {len(found)} resources"
                    )
                return f"{rtype}/{found[0]}"
            return ref

        return resolve

    def execute(
        self, conn: Connection, entry: Entry, pending: PendingWrites | None = None
    ) -> BundleEntry:
        """Run one entry on ``conn`` (new resources queued in ``pending`` when given); its
        ``response`` entry."""
        store, rtype = self.store, entry.resource_type
        if entry.method == "DELETE":
            targets = [entry.resource_id] if entry.resource_id else []
            if entry.query is not None:
                targets = fhir_search.matching_ids(conn, rtype, entry.query)
                if len(targets) > 1:
                    raise PreconditionFailed("the conditional delete matches several resources")
            for rid in targets:
                store.tx_delete(conn, rtype, rid)
            return {"response": {"status": _status(204)}}
        if entry.method == "GET":
            ok: EntryResponse = {"status": _status(200)}
            if entry.resource_id is None:
                searchset = store.tx_search(
                    conn, rtype, entry.query or [], base_url=self.base, budget=self.budget
                )
                return {"resource": searchset, "response": ok}
            self.budget.take(1)
            if entry.history is not None:
                older = store.tx_vread(conn, rtype, entry.resource_id, entry.history)
                return {"resource": older, "response": ok}
            return {"resource": store.tx_read(conn, rtype, entry.resource_id), "response": ok}
        assert entry.resource is not None and entry.resource_id is not None
        body = _rewrite(entry.resource, self.resolver(conn))
        if entry.method == "POST" and entry.existing:
            resource, status = store.tx_read(conn, rtype, entry.resource_id), 200
        elif entry.method == "POST":
            written = store.tx_create(conn, body, new_id=entry.resource_id, pending=pending)
            resource, status = written.resource, written.status
        else:
            body["id"] = entry.resource_id
            written = store.tx_update(conn, rtype, entry.resource_id, body, entry.if_match)
            resource, status = written.resource, written.status
        entry.written = resource
        version = resource["meta"]["versionId"]
        out: BundleEntry = {
            "fullUrl": f"{self.base}/{rtype}/{resource['id']}",
            "resource": resource,
            "response": {
                "status": _status(status),
                "location": f"{rtype}/{resource['id']}/_history/{version}",
                "etag": f'W/"{version}"',
                "lastModified": resource["meta"]["lastUpdated"],
            },
        }
        return out


def process(store: FhirStore, bundle: Any, base: str) -> Bundle:
    """Process a ``transaction`` or ``batch`` Bundle; the ``*-response`` Bundle."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource("POST to the base URL takes a Bundle", expression=["resourceType"])
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidResource(
            f"Bundle.type {kind!r}: the base URL takes a transaction or a batch",
            expression=["Bundle.type"],
        )
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise InvalidResource("Bundle.entry is not a list", expression=["Bundle.entry"])
    if len(raw_entries) > store.max_bundle_entries:
        raise PayloadTooLarge(
            f"the Bundle has {len(raw_entries)} entries; at most {store.max_bundle_entries} "
            "(fhir_max_bundle_entries)",
            expression=["Bundle.entry"],
        )
    if kind == "transaction":
        entries = [_parse_entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        return _transaction(store, base, entries)
    return _batch(store, base, raw_entries)


def _ordered(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (_ORDER[e.method], e.index))


def _transaction(store: FhirStore, base: str, entries: list[Entry]) -> Bundle:
    run = _Run(store, base, entries)
    targets = [
        (e.resource_type, e.resource_id)
        for e in entries
        if e.method in ("PUT", "DELETE") and e.resource_id
    ]
    if len(targets) != len(set(targets)):
        raise InvalidResource("a transaction may change each resource only once")
    responses: dict[int, BundleEntry] = {}
    pending = PendingWrites()
    with store.write_transaction() as conn:
        for entry in entries:
            try:
                run.assign(conn, entry)
            except FhirError as exc:
                raise _located(exc, entry.index) from None
        for entry in _ordered(entries):
            if entry.method == "GET":
                pending.flush(conn)  # reads see this transaction's writes
            try:
                responses[entry.index] = run.execute(conn, entry, pending)
            except FhirError as exc:
                raise _located(exc, entry.index) from None
        pending.flush(conn)
        written = [e for e in entries if e.written is not None]
        try:
            store.check_references(conn, *(e.written for e in written if e.written))
        except FhirError:
            for entry in written:  # find the entry at fault, for its path
                try:
                    store.check_references(conn, entry.written or {})
                except FhirError as exc:
                    raise _located(exc, entry.index) from None
            raise
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [responses[e.index] for e in entries],
    }


def _batch(store: FhirStore, base: str, raw_entries: list[Any]) -> Bundle:
    responses: dict[int, BundleEntry] = {}
    entries: list[Entry] = []
    for i, raw in enumerate(raw_entries):
        try:
            entries.append(_parse_entry(i, raw, base))
        except FhirError as exc:
            responses[i] = _failure(exc)
    run = _Run(store, base, entries)
    for entry in entries:  # plain creates get their ids up front, so later entries resolve
        if entry.method == "POST" and not entry.if_none_exist:
            entry.resource_id = str(uuid.uuid4())
            if entry.full_url:
                run.ids[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"
    for entry in _ordered(entries):
        try:
            with store.write_transaction() as conn:
                if entry.method != "POST" or entry.if_none_exist:
                    run.assign(conn, entry)
                responses[entry.index] = run.execute(conn, entry)
                if entry.written is not None:
                    store.check_references(conn, entry.written)
        except FhirError as exc:
            responses[entry.index] = _failure(_located(exc, entry.index))
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [responses[i] for i in range(len(raw_entries))],
    }


def _failure(exc: FhirError) -> BundleEntry:
    return {"response": {"status": _status(exc.status), "outcome": exc.outcome}}
