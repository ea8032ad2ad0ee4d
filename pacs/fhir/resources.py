"""The JSON shapes of the resources this server builds itself (R4B), as TypedDicts.

Resources that clients send and the store keeps are JSON objects of any of the supported types,
checked against the ``fhir.resources`` R4B models on the way in and out (:mod:`validation`):
:data:`Resource`. The Bundles and OperationOutcomes the server writes are typed field by field.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, cast

Resource = dict[str, Any]
"""The JSON of a stored or submitted resource, validated against its R4B model."""


class Issue(TypedDict):
    """``OperationOutcome.issue``."""

    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str
    expression: NotRequired[list[str]]


class OperationOutcome(TypedDict):
    """An OperationOutcome: what went wrong (or was ignored), with FHIRPath expressions."""

    resourceType: Literal["OperationOutcome"]
    issue: list[Issue]


class BundleLink(TypedDict):
    """``Bundle.link``: ``self``, ``next`` or ``previous`` page of a searchset."""

    relation: Literal["self", "next", "previous"]
    url: str


class EntrySearch(TypedDict):
    """``Bundle.entry.search``: why the entry is in a searchset."""

    mode: Literal["match", "include", "outcome"]


class EntryResponse(TypedDict):
    """``Bundle.entry.response`` of a ``transaction-response`` or ``batch-response``."""

    status: str
    location: NotRequired[str]
    etag: NotRequired[str]
    lastModified: NotRequired[str]
    outcome: NotRequired[OperationOutcome]


class BundleEntry(TypedDict):
    """One ``Bundle.entry`` of a Bundle the server writes."""

    fullUrl: NotRequired[str]
    resource: NotRequired[Resource | OperationOutcome | Bundle]
    search: NotRequired[EntrySearch]
    response: NotRequired[EntryResponse]


class Bundle(TypedDict):
    """A ``searchset``, ``transaction-response`` or ``batch-response`` Bundle."""

    resourceType: Literal["Bundle"]
    type: Literal["searchset", "transaction-response", "batch-response"]
    total: NotRequired[int]
    link: NotRequired[list[BundleLink]]
    entry: NotRequired[list[BundleEntry]]


def found(bundle: Bundle, resource_type: str | None = None) -> list[Resource]:
    """The resources of a searchset's ``match`` and ``include`` entries (not its ``outcome``
    entry), only those of ``resource_type`` when given."""
    resources = []
    for entry in bundle.get("entry", []):
        if "resource" not in entry or entry.get("search", {}).get("mode") == "outcome":
            continue
        resource = cast(Resource, entry["resource"])  # search entries hold stored resources
        if resource_type is None or resource.get("resourceType") == resource_type:
            resources.append(resource)
    return resources
