"""Values of search parameters: dates as UTC ranges, normalised strings, references."""

from __future__ import annotations

import calendar
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone

DATE_MIN = "0001-01-01T00:00:00.000000"
DATE_MAX = "9999-12-31T23:59:59.999999"

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_REFERENCE = re.compile(
    r"^(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def fmt(value: datetime) -> str:
    """A UTC datetime in the index's sortable string form."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def date_range(text: str) -> tuple[datetime, datetime]:
    """The inclusive UTC range a FHIR date/dateTime/instant stands for, by its precision.

    ``2024`` is the whole year, ``2024-03-01`` the whole day (taken in UTC), a dateTime
    without seconds the whole minute. Raises ``ValueError`` on anything else.
    """
    match = _DATE.match(text.strip())
    if not match:
        raise ValueError(f"not a FHIR date: {text!r}")
    g = match.groupdict()
    year = int(g["y"])
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    if g["m"] is None:
        low = datetime(year, 1, 1, tzinfo=tz)
        high = datetime(year + 1, 1, 1, tzinfo=tz) if year < 9999 else None
    elif g["d"] is None:
        month = int(g["m"])
        low = datetime(year, month, 1, tzinfo=tz)
        days = calendar.monthrange(year, month)[1]
        high = low + timedelta(days=days)
    elif g["H"] is None:
        low = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
        high = low + timedelta(days=1)
    else:
        second = int(g["S"]) if g["S"] is not None else 0
        micro = int((g["f"] or "0")[:6].ljust(6, "0"))
        low = datetime(
            year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), second, micro, tzinfo=tz
        )
        if g["S"] is None:
            high = low + timedelta(minutes=1)
        elif g["f"] is None:
            high = low + timedelta(seconds=1)
        else:
            high = low + timedelta(microseconds=1)
    if high is None:
        return low.astimezone(UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    return low.astimezone(UTC), (high - timedelta(microseconds=1)).astimezone(UTC)


def normalise(text: str) -> str:
    """Case-folded, accent-free, whitespace-collapsed form used for string search."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.split())[:255]


_SEARCH_SPECIAL = ("\\", ",", "$", "|")  # backslash first


def escape_search_value(text: str) -> str:
    """``text`` as one search value: ``\\`` ``,`` ``$`` ``|`` escaped with ``\\`` (R4 search,
    "Escaping Search Parameters")."""
    for ch in _SEARCH_SPECIAL:
        text = text.replace(ch, "\\" + ch)
    return text


def unescape_search_value(text: str) -> str:
    """The literal text of a search value (``\\x`` -> ``x``)."""
    out, escaped = [], False
    for ch in text:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def split_unescaped(text: str, separator: str, maxsplit: int = -1) -> list[str]:
    """``text`` split at each ``separator`` not escaped by ``\\``; the parts stay escaped."""
    parts, current, escaped = [], "", False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            current += ch
            escaped = True
        elif ch == separator and maxsplit != 0:
            parts.append(current)
            current = ""
            maxsplit -= 1
        else:
            current += ch
    parts.append(current)
    return parts


def parse_reference(text: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference (relative or absolute URL), None otherwise."""
    if text.startswith(("#", "urn:")):
        return None
    match = _REFERENCE.match(text)
    return (match["type"], match["id"]) if match else None
