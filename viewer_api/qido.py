"""QIDO-RS (PS3.18 10.6): from a query string to a C-FIND identifier, and back to DICOM JSON.

Matching is ``pacs.query``'s, the same as C-FIND. This module only turns query parameters into
an identifier (matching keys with values, return keys empty), checks them (a ``QidoError``
carries the 4xx status and a message meant for the client) and finishes each response
(RetrieveURL, InstanceAvailability).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.datadict import (
    dictionary_has_tag,
    dictionary_VR,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from pacs.metadata.dicom_json import element
from pacs.query.find import Match, is_non_ascii
from pacs.query.keys import COMPUTED, KEYS, LEVELS
from pacs.storage import is_valid_uid


class QidoError(Exception):
    """A QIDO-RS request the archive refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
"""Study attributes of every study-level response (PS3.18 Table 10.6.3-3, plus the
description and the counts)."""

SERIES_DEFAULTS = (
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceAvailability",
    "RetrieveURL",
    "NumberOfSeriesRelatedInstances",
)
"""Series attributes of every series-level response (PS3.18 Table 10.6.3-4, of those the
index holds)."""

INSTANCE_DEFAULTS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)
"""Instance attributes of every instance-level response (PS3.18 Table 10.6.3-5, of those the
index holds)."""

_DEFAULTS = {"STUDY": STUDY_DEFAULTS, "SERIES": SERIES_DEFAULTS, "IMAGE": INSTANCE_DEFAULTS}
_LIST_VRS = {"UI", "CS"}  # values that may be lists, with ',' or '\'
_MAX_VALUE = 1024
_MAX_OFFSET = 2**31 - 1
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_INTEGER = re.compile(r"^[+-]?\d{1,10}$")
_SPLIT = re.compile(r"[,\\]")
_INTEGER_VRS = {"IS", "US", "UL", "SS", "SL", "SV", "UV"}


@dataclass
class QidoQuery:
    """A parsed QIDO-RS request: the identifier for ``pacs.query.find`` and the paging."""

    level: str
    identifier: Dataset
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def resolve(name: str) -> BaseTag:
    """The tag of an attribute given by keyword (``PatientName``) or tag (``00100010``)."""
    text = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        tag = Tag(int(text, 16))
        if dictionary_has_tag(tag):
            return tag
        raise QidoError(400, f"unknown attribute tag {text!r}")
    number = tag_for_keyword(text)
    if number is None:
        raise QidoError(400, f"unknown attribute {text!r}: not a DICOM keyword or tag")
    return Tag(number)


def parse(
    params: Iterable[tuple[str, str]],
    level: str,
    *,
    scope: dict[str, str],
    max_limit: int,
) -> QidoQuery:
    """Parse the query parameters of a search at ``level`` (``STUDY``, ``SERIES``,
    ``IMAGE``); ``scope`` holds the UIDs of the path (``StudyInstanceUID``...)."""
    query = QidoQuery(level=level, identifier=Dataset())
    includes: list[str] = []
    matching: dict[BaseTag, tuple[str, str]] = {}
    unsupported: list[str] = []
    limit_text = offset_text = None
    for name, value in params:
        if not name:
            continue  # "?&..." (Weasis)
        lowered = name.lower()
        if lowered == "includefield":
            includes += [part for part in value.split(",") if part.strip()]
        elif lowered == "fuzzymatching":
            query.fuzzy = _boolean(value)
        elif lowered == "limit":
            limit_text = value
        elif lowered == "offset":
            offset_text = value
        else:
            path = name.split(".")
            tag = resolve(path[0])
            if tag in matching:
                raise QidoError(400, f"{name} is given more than once")
            if len(path) > 1:
                if dictionary_VR(tag) != "SQ":
                    raise QidoError(400, f"{path[0]} is not a sequence: {name!r}")
                nested = [resolve(part) for part in path[1:]]
                query.identifier.add(_sequence_key(tag, nested))
                unsupported.append(name)
                continue
            matching[tag] = (name, value)
    for tag, (name, value) in matching.items():
        keyword = _matching_keyword(keyword_for_tag(tag), level)
        if keyword is None:
            if value.strip():
                unsupported.append(name)
            query.identifier.add(_empty(tag))
            continue
        query.identifier.add(DataElement(Tag(keyword), _vr(keyword), _value(name, keyword, value)))
    query.identifier.QueryRetrieveLevel = level  # the resource decides, not a parameter
    query.identifier.pop("SpecificCharacterSet", None)  # JSON is UTF-8
    for keyword, uid in scope.items():
        if not is_valid_uid(uid):
            raise QidoError(400, f"the {keyword} in the path is not a valid UID")
        setattr(query.identifier, keyword, uid)
    for keyword in _return_keys(level, scope, includes):
        tag = Tag(keyword)
        if tag not in query.identifier:
            query.identifier.add(_empty(tag))
    if unsupported:
        query.warnings.append(
            "The following attributes are not supported as matching keys and were ignored: "
            + ", ".join(unsupported)
        )
    query.limit, query.offset = _paging(limit_text, offset_text, max_limit, query.warnings)
    return query


def _matching_keyword(keyword: str, level: str) -> str | None:
    """The index key an attribute matches at ``level``; None: not matchable (ignored)."""
    if level == "STUDY" and keyword == "Modality":
        return "ModalitiesInStudy"  # /studies?Modality=CT: studies with a CT series
    key = KEYS.get(keyword)
    if key is None:
        return None
    if LEVELS.index(key.level) > LEVELS.index(level):
        below = {"SERIES": "/series", "IMAGE": "/instances"}[key.level]
        raise QidoError(400, f"{keyword} is a {key.level.lower()}-level attribute: query {below}")
    return keyword


def _value(name: str, keyword: str, raw: str) -> str | list[str]:
    """``raw`` checked against the attribute's VR; lists split for UI and CS."""
    if len(raw) > _MAX_VALUE:
        raise QidoError(400, f"{name}: value longer than {_MAX_VALUE} characters")
    if any(ord(char) < 0x20 for char in raw):
        raise QidoError(400, f"{name}: control characters are not allowed")
    vr = _vr(keyword)
    value = raw.strip()
    if not value or value == "*":
        return ""
    if vr in _LIST_VRS:
        items = [item.strip() for item in _SPLIT.split(value) if item.strip()]
        if vr == "UI":
            for item in items:
                if not is_valid_uid(item):
                    raise QidoError(400, f"{name}: {item!r} is not a valid UID")
        return items if len(items) > 1 else items[0]
    if vr in ("DA", "TM"):
        _check_range(name, value, vr)
    elif KEYS[keyword].kind == "int" and not _INTEGER.match(value):
        raise QidoError(400, f"{name}: {value!r} is not an integer")
    return value


def _check_range(name: str, value: str, vr: str) -> None:
    low, dash, high = value.partition("-")
    if dash and not (low or high):
        raise QidoError(400, f"{name}: empty range")
    for part in (low, high):
        if not part:
            continue
        if vr == "DA":
            try:
                if not _DATE.match(part):
                    raise ValueError(part)
                datetime.strptime(part, "%Y%m%d")
            except ValueError as exc:
                raise QidoError(400, f"{name}: {part!r} is not a date (YYYYMMDD)") from exc
        elif not _TIME.match(part.replace(":", "")):
            raise QidoError(400, f"{name}: {part!r} is not a time (HHMMSS.FFFFFF)")


def _return_keys(level: str, scope: dict[str, str], includes: list[str]) -> list[str]:
    """Default attributes of the level (and of the levels above when not in the path),
    the unique keys RetrieveURL needs, then the included fields."""
    keywords: list[str] = []
    if level == "STUDY" or "StudyInstanceUID" not in scope:
        keywords += STUDY_DEFAULTS
    if level == "IMAGE" and "SeriesInstanceUID" not in scope:
        keywords += SERIES_DEFAULTS
    if level != "STUDY":
        keywords += _DEFAULTS[level]
    keywords += ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"][: LEVELS.index(level)]
    for name in includes:
        if name.strip().lower() == "all":
            depth = LEVELS.index(level)
            keywords += [k for k, key in KEYS.items() if LEVELS.index(key.level) <= depth]
            keywords += [k for k, lvl in COMPUTED.items() if LEVELS.index(lvl) <= depth]
        else:
            top, _, nested = name.strip().partition(".")
            tag = resolve(top)
            if nested:  # an attribute path: returned as the (empty) sequence
                if dictionary_VR(tag) != "SQ":
                    raise QidoError(400, f"{top} is not a sequence: {name!r}")
                for part in nested.split("."):
                    resolve(part)
            keywords.append(keyword_for_tag(tag))
    return list(dict.fromkeys(keywords))


def _paging(
    limit_text: str | None, offset_text: str | None, max_limit: int, warnings: list[str]
) -> tuple[int, int]:
    offset = _natural("offset", offset_text, 0)
    if offset > _MAX_OFFSET:
        raise QidoError(400, f"offset must be at most {_MAX_OFFSET}")
    limit = _natural("limit", limit_text, max_limit)
    if limit == 0:
        raise QidoError(400, "limit must be a positive integer")
    if limit > max_limit:
        warnings.append(
            f"The limit {limit} exceeds the maximum supported by the server; "
            f"at most {max_limit} results are returned"
        )
        limit = max_limit
    return limit, offset


def _natural(name: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    if not re.fullmatch(r"\s*\d{1,19}\s*", text):
        raise QidoError(400, f"{name} must be a non-negative integer, not {text[:40]!r}")
    return int(text)


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise QidoError(400, f"fuzzymatching must be true or false, not {value[:40]!r}")
    return lowered == "true"


def _vr(keyword: str) -> str:
    return str(dictionary_VR(keyword))


def _empty(tag: BaseTag) -> DataElement:
    vr = str(dictionary_VR(tag))
    return DataElement(tag, vr, Sequence() if vr == "SQ" else None)


def _sequence_key(tag: BaseTag, nested: list[BaseTag]) -> DataElement:
    """A sequence return key with one item holding the nested attribute path, empty."""
    item = Dataset()
    inner = item
    for position, inner_tag in enumerate(nested):
        if position == len(nested) - 1:
            inner.add(_empty(inner_tag))
        else:
            child = Dataset()
            inner.add(DataElement(inner_tag, "SQ", Sequence([child])))
            inner = child
    return DataElement(tag, "SQ", Sequence([item]))


def to_json(match: Match, level: str, base_url: str) -> dict[str, object]:
    """One match as DICOM JSON (PS3.18 F.2), with RetrieveURL and InstanceAvailability.

    Built straight from the index values (what ``Dataset.to_json_dict`` would write for the
    C-FIND response, without building the data set: QIDO-RS answers many rows)."""
    values = {key.keyword: value for key, value in match}
    out: dict[str, object] = {}
    non_ascii = False
    for key, value in sorted(match, key=lambda item: item[0].tag):
        if key.keyword == "RetrieveURL":
            value = _retrieve_url(values, level, base_url)
        elif key.keyword == "InstanceAvailability":
            value = "ONLINE"
        non_ascii = non_ascii or is_non_ascii(value)
        out[f"{key.tag:08X}"] = _element(key.vr if value is not None else key.empty_vr, value)
    if non_ascii:
        out["00080005"] = element("CS", ["ISO_IR 192"])
    return dict(sorted(out.items()))


def _retrieve_url(values: dict[str, Any], level: str, base_url: str) -> str:
    url = f"{base_url}/studies/{values.get('StudyInstanceUID')}"
    if level != "STUDY":
        url += f"/series/{values.get('SeriesInstanceUID')}"
    if level == "IMAGE":
        url += f"/instances/{values.get('SOPInstanceUID')}"
    return url


def _element(vr: str, value: Any) -> dict[str, object]:
    if value is None:
        return {"vr": vr, "Value": []} if vr == "SQ" else element(vr, [])
    items = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(str(item)) for item in items]}
    if vr in _INTEGER_VRS:
        return {"vr": vr, "Value": [int(item) for item in items]}
    if vr in ("DS", "FL", "FD"):
        return {"vr": vr, "Value": [float(item) for item in items]}
    return {"vr": vr, "Value": [str(item) for item in items]}


def _person_name(value: str) -> dict[str, str]:
    groups = zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False)
    return {name: group for name, group in groups if group}
