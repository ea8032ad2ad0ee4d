"""Extraction of search index rows from a resource, driven by ``searchparams.SEARCH_PARAMS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pacs.fhir.searchparams import DATE, REFERENCE, SEARCH_PARAMS, STRING, TOKEN
from pacs.fhir.values import DATE_MAX, DATE_MIN, date_range, fmt, normalise, parse_reference

_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


@dataclass
class IndexRows:
    """Rows for the four index tables: ``(param, ...)`` tuples."""

    tokens: list[tuple[str, str, str]] = field(default_factory=list)
    references: list[tuple[str, str, str]] = field(default_factory=list)
    dates: list[tuple[str, str, str]] = field(default_factory=list)
    strings: list[tuple[str, str, str]] = field(default_factory=list)  # param, normalised, exact


def walk(node: Any, path: str | tuple[str, ...]) -> list[Any]:
    """Every value at ``path`` (dot-separated, or its steps) below ``node``, flattening lists."""
    values = [node]
    for name in path.split(".") if isinstance(path, str) else path:
        nxt: list[Any] = []
        for value in values:
            if isinstance(value, dict) and name in value:
                child = value[name]
                if isinstance(child, list):
                    nxt.extend(child)
                else:
                    nxt.append(child)
        if not nxt:
            return nxt
        values = nxt
    return values


def _reference_strings(node: Any) -> Iterator[str]:
    """Every ``Reference.reference`` string below ``node`` (outside ``contained``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif key != "contained" and isinstance(value, dict | list):
                yield from _reference_strings(value)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, dict | list):
                yield from _reference_strings(value)


def _tokens(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str | int):
        yield "", str(value)
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "value" not in value):
            for coding in value.get("coding", []):
                yield from _tokens(coding)
        elif "code" in value:
            yield value.get("system", ""), str(value["code"])
        elif "value" in value:  # Identifier, ContactPoint
            yield value.get("system", ""), str(value["value"])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        parts = _NAME_PARTS if "family" in value or "given" in value else _ADDRESS_PARTS
        for part in parts:
            for item in walk(value, part):
                if isinstance(item, str):
                    yield item


def _dates(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        low, high = date_range(value)
        yield fmt(low), fmt(high)
    elif isinstance(value, dict) and ("start" in value or "end" in value):
        start = fmt(date_range(value["start"])[0]) if "start" in value else DATE_MIN
        end = fmt(date_range(value["end"])[1]) if "end" in value else DATE_MAX
        yield start, end


def extract(
    resource: dict[str, Any],
    local_target: Callable[[str], tuple[str, str] | None] | None = None,
) -> IndexRows:
    """The index rows of ``resource`` (already validated) for its type's search parameters.

    With ``local_target`` (reference string -> ``(type, id)`` of a local resource, or None),
    every other local reference is indexed too, under the empty parameter name, so that a
    delete can tell whether anything still refers to a resource.
    """
    rows = IndexRows()
    for name, param in SEARCH_PARAMS[resource["resourceType"]].items():
        for steps in param.steps:
            if steps[0] not in resource:
                continue
            for value in walk(resource, steps):
                if param.type == TOKEN:
                    for system, code in _tokens(value):
                        rows.tokens.append((name, system[:255], code[:255]))
                elif param.type == REFERENCE:
                    ref = value.get("reference") if isinstance(value, dict) else None
                    target = parse_reference(ref) if isinstance(ref, str) else None
                    if target and (not param.targets or target[0] in param.targets):
                        rows.references.append((name, *target))
                elif param.type == DATE:
                    rows.dates.extend((name, low, high) for low, high in _dates(value))
                elif param.type == STRING:
                    rows.strings.extend(
                        (name, norm, text[:255])
                        for text in _strings(value)
                        if (norm := normalise(text))
                    )
    if local_target is not None:
        indexed = {(t, i) for _, t, i in rows.references}
        for ref in _reference_strings(resource):
            target = local_target(ref)
            if target and target not in indexed:
                indexed.add(target)
                rows.references.append(("", *target))
    return rows


def local_references(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(FHIRPath, reference)`` of every ``Reference.reference`` string in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "contained":
                continue
            sub = f"{path}.{key}" if path else key
            if key == "reference" and isinstance(value, str):
                yield path, value
            else:
                yield from local_references(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from local_references(value, f"{path}[{i}]")
