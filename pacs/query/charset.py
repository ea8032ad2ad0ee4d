"""The Specific Character Set of a C-FIND response (Query/Retrieve and Modality Worklist).

Values are held as Unicode; pydicom encodes the response in the character set this module
chooses (ISO 2022 escape sequences, and the return to ASCII before each ``^`` and ``=``
component separator, are pydicom's). The request's character set is kept when every value
of the response fits it, judged with pydicom's own encoders (so ISO_IR 13, JIS X 0201, is
not mistaken for Shift JIS); otherwise the response is in UTF-8 (ISO_IR 192). A code
extension term that cannot be the default repertoire (ISO 2022 IR 87, 159, 149, 58) gets
the empty first value PS3.3 C.12.1.1.2 requires (``\\ISO 2022 IR 87``). A request in
ISO 2022 IR 58 (GB2312) is answered in UTF-8: pydicom does not write its escape sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from pydicom.charset import convert_encodings, custom_encoders

UTF8 = "ISO_IR 192"
_MULTI_BYTE_EXTENSIONS = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)
"""Code extensions for G1 only: the default (first) value must come before them."""
_NOT_WRITTEN = frozenset({"ISO 2022 IR 58"})
"""Terms pydicom (3.0) cannot write: it encodes GB2312 without its escape sequence."""


def requested_terms(raw: object) -> list[str]:
    """The SpecificCharacterSet terms of a request, empty first value kept."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str | bytes) else list(cast(Iterable[object], raw))
    terms = [
        (item.decode("ascii", "replace") if isinstance(item, bytes) else str(item)).strip()
        for item in items
    ]
    return terms if any(terms) else []


def normalised(terms: list[str]) -> list[str]:
    """``terms`` with the empty first value a multi-byte code extension needs."""
    if terms and terms[0] in _MULTI_BYTE_EXTENSIONS:
        return ["", *terms]
    return terms


def _encodable(char: str, encoding: str) -> bool:
    encoder = custom_encoders.get(encoding)
    try:
        if encoder is not None:
            encoder(char, errors="strict")
        else:
            char.encode(encoding)
    except (UnicodeError, ValueError, LookupError):
        return False
    return True


def fits(texts: Iterable[str], terms: list[str]) -> bool:
    """True when every character of ``texts`` can be written in the character set
    ``terms`` (with its code extensions: each character by one of its repertoires)."""
    try:
        encodings = convert_encodings(terms or [""])
    except LookupError:
        return False
    chars = {char for text in texts for char in text if not char.isascii()}
    return all(any(_encodable(char, encoding) for encoding in encodings) for char in chars)


def response_character_set(requested: object, texts: Iterable[str]) -> list[str] | str | None:
    """The SpecificCharacterSet of a response whose text values are ``texts`` to a request
    whose SpecificCharacterSet is ``requested``: None (leave it out) or "" for plain ASCII,
    the request's own (normalised) when every value fits it, else ISO_IR 192."""
    values = list(texts)
    terms = normalised(requested_terms(requested))
    if all(text.isascii() for text in values):
        return "" if terms else None
    if terms and UTF8 not in terms and not _NOT_WRITTEN & set(terms) and fits(values, terms):
        return terms if len(terms) > 1 else terms[0]
    return UTF8
