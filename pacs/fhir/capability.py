"""The CapabilityStatement, generated from the implemented types, interactions and parameters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pacs import __version__
from pacs.fhir.searchparams import REFERENCE, SEARCH_PARAMS

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
"""Type-level interactions every implemented resource type supports."""

_COMMON = [
    {"name": "_id", "type": "token", "documentation": "Logical id of the resource."},
    {"name": "_lastUpdated", "type": "date", "documentation": "meta.lastUpdated, with prefixes."},
]


def _includes(rtype: str) -> list[str]:
    return sorted(
        f"{rtype}:{name}" for name, p in SEARCH_PARAMS[rtype].items() if p.type == REFERENCE
    )


def _revincludes(rtype: str) -> list[str]:
    return sorted(
        f"{source}:{name}"
        for source, params in SEARCH_PARAMS.items()
        for name, p in params.items()
        if p.type == REFERENCE and (not p.targets or rtype in p.targets)
    )


def capability_statement(
    base_url: str,
    operations: dict[str, list[str]] | None = None,
    security: dict[str, Any] | None = None,
    served: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The server's CapabilityStatement; ``operations`` maps a type ("" for the system) to the
    names of the operations the HTTP layer serves (e.g. ``{"Patient": ["everything"]}``);
    ``security`` is the ``rest.security`` element (SMART on FHIR, ``pacs.security.smart``);
    ``served`` are the entries of types served outside the resource store (AuditEvent, from
    the audit trail: read and search only)."""
    operations = operations or {}
    resources = list(served)
    for rtype in sorted(SEARCH_PARAMS):
        params = [
            {
                "name": name,
                "type": p.type,
                "documentation": ("Not a standard parameter. " if not p.standard else "")
                + "Path: "
                + " | ".join(f"{rtype}.{path}" for path in p.paths)
                + (f" (targets: {', '.join(p.targets)})" if p.targets else ""),
            }
            for name, p in sorted(SEARCH_PARAMS[rtype].items())
        ]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "local", "enforced"],
            "searchInclude": _includes(rtype),
            "searchRevInclude": _revincludes(rtype),
            "searchParam": _COMMON + params,
        }
        ops = operations.get(rtype, [])
        if ops:
            entry["operation"] = [
                {"name": op, "definition": f"http://hl7.org/fhir/OperationDefinition/{rtype}-{op}"}
                for op in sorted(ops)
            ]
        resources.append(entry)
    resources.sort(key=lambda entry: str(entry["type"]))
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "Regional imaging archive: studies, AI results and their EMR context.",
        **({"security": security} if security else {}),
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
    }
    if operations.get(""):
        rest["operation"] = [
            {"name": op, "definition": f"http://hl7.org/fhir/OperationDefinition/{op}"}
            for op in sorted(operations[""])
        ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "publisher": "Regional imaging archive",
        "kind": "instance",
        "software": {"name": "pacs", "version": __version__},
        "implementation": {"description": "FHIR R4 API of the archive", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }
