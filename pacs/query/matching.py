"""PS3.4 C.2.2.2 matching of one key value, as a SQLAlchemy condition."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, SQLColumnExpression, String, and_, func, literal, or_, true

from pacs.config import PnMatching
from pacs.query.errors import QueryError
from pacs.query.keys import Key

ESCAPE = "!"
"""Escape character of the LIKE patterns built from DICOM wildcards."""


@dataclass(frozen=True)
class MatchOptions:
    """Matching choices beyond PS3.4 C.2.2.2: PN component matching (``PACS_PN_COMPONENT_
    MATCHING``) and QIDO-RS ``fuzzymatching`` (every word of the key is a prefix of a word
    of the name, case-insensitively)."""

    pn_matching: PnMatching = PnMatching.WHOLE
    fuzzy: bool = False


DEFAULT_OPTIONS = MatchOptions()

_NAME_SEPARATORS = re.compile(r"[\^= ]+")


def has_wildcard(value: str) -> bool:
    """Whether ``value`` uses the DICOM wildcards ``*`` or ``?``."""
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """A LIKE pattern matching ``value``'s DICOM wildcards, every other character literal."""
    out = []
    for char in value:
        if char in (ESCAPE, "%", "_"):
            out.append(ESCAPE + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def values_of(raw: Any) -> list[str]:
    """The values of a data element's value as strings (a MultiValue gives several)."""
    if raw is None:
        return []
    items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    texts = (i.decode("ascii", "replace") if isinstance(i, bytes) else str(i) for i in items)
    return [text.strip() for text in texts if text.strip()]


def condition(
    key: Key, raw: Any, options: MatchOptions = DEFAULT_OPTIONS
) -> ColumnElement[bool] | None:
    """The condition ``raw`` (a request element's value) puts on ``key``; None: universal."""
    values = values_of(raw)
    if not values or values == ["*"]:
        return None
    if len(values) > 1:
        return or_(*(_single(key, value, options) for value in values))
    return _single(key, values[0], options)


def _single(key: Key, value: str, options: MatchOptions) -> ColumnElement[bool]:
    column: SQLColumnExpression[Any] = key.column
    if key.kind == "int":
        try:
            return column == int(value)
        except ValueError as exc:
            raise QueryError(f"not an integer: {value!r}") from exc
    if key.kind in ("date", "time") and "-" in value:
        return _range(column, value, key.kind)
    if key.kind == "list":
        column = literal("\\", String) + column + literal("\\", String)
        pattern = "%\\" + like_pattern(value) + "\\%"
        return column.like(pattern, escape=ESCAPE)
    if key.kind == "pn":
        return person_name(column, value, options)
    if key.kind == "time" and not has_wildcard(value):
        return column.like(like_pattern(value) + "%", escape=ESCAPE)
    if has_wildcard(value):
        return column.like(like_pattern(value), escape=ESCAPE)
    return column == value


def _range(column: SQLColumnExpression[str], value: str, kind: str) -> ColumnElement[bool]:
    low, high = range_bounds(value, kind)
    parts = [column != ""]
    if low:
        parts.append(column >= low)
    if high:
        parts.append(column <= high + "~")  # '~' sorts after digits and '.': prefixes included
    return and_(*parts)


def range_bounds(value: str, kind: str) -> tuple[str, str]:
    """The bounds of a date or time range (``A-B``, ``A-`` or ``-B``), each :func:`compact`;
    raise :class:`QueryError` when a bound is malformed or both are empty."""
    low, _, high = value.partition("-")
    low, high = compact(low, kind), compact(high, kind)
    if not low and not high:
        raise QueryError(f"empty range: {value!r}")
    return low, high


def compact(text: str, kind: str) -> str:
    """A date (``kind`` "date") without the old ``.`` separators, or a time without ``:``, as
    digits (a time may keep its fraction); raise :class:`QueryError` on anything else."""
    text = text.strip().replace(".", "") if kind == "date" else text.strip().replace(":", "")
    allowed = "0123456789" if kind == "date" else "0123456789."
    if any(char not in allowed for char in text):
        raise QueryError(f"not a {kind}: {text!r}")
    return text


def person_name(
    column: SQLColumnExpression[str], value: str, options: MatchOptions
) -> ColumnElement[bool]:
    """Case-insensitive Person Name matching, whole-value, by component or fuzzy."""
    name = func.lower(column)
    value = value.lower()
    if options.fuzzy:
        words = [word for word in _NAME_SEPARATORS.split(value) if word]
        if not words:
            return true()
        return and_(*(_word_prefix(name, like_pattern(word)) for word in words))
    if options.pn_matching == PnMatching.COMPONENTS and value.strip("^"):
        components = value.rstrip("^").split("^")
        pattern = "^".join(like_pattern(part) if part else "%" for part in components)
        return _any_group(name, [pattern, pattern + "^%"], "=" in value)
    if has_wildcard(value):
        return _any_group(name, [like_pattern(value)], "=" in value)
    if "=" in value:
        return name == value
    return or_(name == value, name.like(like_pattern(value) + "=%", escape=ESCAPE))


def _any_group(
    name: SQLColumnExpression[str], patterns: list[str], whole_only: bool
) -> ColumnElement[bool]:
    """The name matches one of ``patterns`` as a whole; unless ``whole_only`` (the key
    names several component groups), also when its alphabetic component group (before the
    first ``=``, PS3.5 6.2.1) does. Both are prefix patterns, which an index serves."""
    tails = ("",) if whole_only else ("", "=%")
    likes = [name.like(pattern + tail, escape=ESCAPE) for pattern in patterns for tail in tails]
    return or_(*likes)


def _word_prefix(name: SQLColumnExpression[str], pattern: str) -> ColumnElement[bool]:
    """``pattern`` starts the name or one of its components, name groups or words."""
    return or_(*(name.like(lead + pattern + "%", escape=ESCAPE) for lead in ("", "%^", "%=", "% ")))
