"""HTTP media types: Content-Type parsing and Accept negotiation (RFC 9110 8.3, 12.5.1).

One parser and one matcher for every HTTP surface (DICOMweb, FHIR): ``parse_media_type``
splits a Content-Type or one Accept entry; ``media_ranges`` orders an Accept header's entries
(``multipart/related`` ranges stand for their ``type`` parameter); ``accepts`` answers
whether a header admits one of some media types.
"""

from __future__ import annotations

from dataclasses import dataclass

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into (lower-case type/subtype, parameters).

    Parameter names are lower-cased; values may be tokens or quoted strings (quotes and
    backslash escapes removed; a ``;`` inside quotes is part of the value).
    """
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    media_type = items[0].strip().lower()
    params: dict[str, str] = {}
    for item in items[1:]:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _unquote(raw[1:-1])
        params[name] = raw
    return media_type, params


def _unquote(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header."""

    media_type: str  # lower case; for multipart/related, the ``type`` parameter
    multipart: bool
    transfer_syntax: str  # "" when not given
    quality: float


def media_ranges(accept: str) -> list[MediaRange]:
    """The entries of an Accept header, best first (absent header: ``*/*``)."""
    ranges = []
    for entry in _split(accept) or ["*/*"]:
        media_type, params = parse_media_type(entry)
        if not media_type:
            continue
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        multipart = media_type == MULTIPART
        inner = params.get("type", "").strip().lower() if multipart else media_type
        syntax = params.get("transfer-syntax", "").strip()
        ranges.append(MediaRange(inner, multipart, syntax, quality))
    return sorted(ranges, key=lambda r: -r.quality)


def _split(accept: str) -> list[str]:
    """Split on commas outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in accept:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def matches(range_type: str, media_type: str) -> bool:
    """Whether the media range ``range_type`` (``*/*``, ``type/*`` or a type) covers
    ``media_type``."""
    if range_type in ("", "*/*", media_type):
        return True
    return range_type.endswith("/*") and media_type.startswith(range_type[:-1])


def accepts(accept: str, *media_types: str, in_multipart: bool = False) -> bool:
    """Whether the Accept header (absent: ``*/*``) admits one of ``media_types`` as a whole
    body; with ``in_multipart``, also as the parts of a ``multipart/related`` body."""
    return any(
        (in_multipart or not r.multipart) and any(matches(r.media_type, t) for t in media_types)
        for r in media_ranges(accept)
    )
