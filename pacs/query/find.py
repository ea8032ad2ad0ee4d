"""Run a C-FIND / QIDO-RS identifier against the index and build the response identifiers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom import config
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from sqlalchemy import Select, distinct, func, select
from sqlalchemy.orm import Session

from pacs.index.models import Instance, Patient, Series, Study
from pacs.query.charset import response_character_set
from pacs.query.errors import QueryError
from pacs.query.keys import COMPUTED, ENTITIES, KEYS, LEVELS, UNIQUE_KEYS, QueryModel
from pacs.query.matching import DEFAULT_OPTIONS, MatchOptions, condition, values_of

if TYPE_CHECKING:
    from pacs.security.imaging import ImagingScope

_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet"}
_BINARY_INTS = {"US", "UL", "SS", "SL", "SV", "UV"}  # binary VRs take ints, not strings


@dataclass(frozen=True)
class ReturnKey:
    """One key of the response identifier: its tag, keyword, the VR of a value (the data
    dictionary's) and the VR of the element when it has no value (the request's)."""

    tag: BaseTag
    keyword: str
    vr: str
    empty_vr: str


Match = list[tuple[ReturnKey, Any]]
"""The values of one match, by return key (None: no value)."""


def find(
    session: Session,
    identifier: Dataset,
    model: QueryModel,
    *,
    options: MatchOptions = DEFAULT_OPTIONS,
    hierarchical: bool = True,
    limit: int | None = None,
    offset: int = 0,
    scope: ImagingScope | None = None,
) -> Iterator[Dataset]:
    """The response identifiers of every match of ``identifier`` under ``model``, in a
    stable order (primary keys from the top level down).

    ``hierarchical=False`` (QIDO-RS ``/series``, ``/instances``) drops the requirement of
    unique keys above the query level; ``limit``/``offset`` page through the matches.
    ``scope`` (the caller's reach, ``pacs.security.imaging``) is part of the query: rows
    outside it are never fetched. Raises ``QueryError`` for an identifier that does not fit
    the model (an unknown level, a missing higher-level unique key, an unparseable value).
    """
    level = query_level(identifier, model)
    matches = find_values(
        session,
        identifier,
        model,
        options=options,
        hierarchical=hierarchical,
        limit=limit,
        offset=offset,
        scope=scope,
    )
    for match in matches:
        yield response(identifier, level, match)


def find_values(
    session: Session,
    identifier: Dataset,
    model: QueryModel,
    *,
    options: MatchOptions = DEFAULT_OPTIONS,
    hierarchical: bool = True,
    limit: int | None = None,
    offset: int = 0,
    scope: ImagingScope | None = None,
) -> Iterator[Match]:
    """Like ``find``, the values of every match without building data sets (QIDO-RS turns
    them into DICOM JSON directly)."""
    level = query_level(identifier, model)
    statement = build_select(
        identifier, level, model, options, hierarchical=hierarchical, scope=scope
    )
    if limit is not None:
        statement = statement.limit(limit)
    if offset:
        statement = statement.offset(offset)
    keys = return_keys(identifier)
    _unicode_lower(session)
    for row in session.execute(statement):
        found = {type(entity).__name__: entity for entity in row}
        yield [(key, _value(session, key.keyword, found)) for key in keys]


def return_keys(identifier: Dataset) -> list[ReturnKey]:
    """The keys of ``identifier`` a response carries (all but the level and character set)."""
    keys = []
    for element in identifier:
        keyword = element.keyword or keyword_for_tag(element.tag)
        if keyword in _SKIP or element.tag.group == 0x0000:
            continue
        vr = str(dictionary_VR(element.tag)) if dictionary_has_tag(element.tag) else element.VR
        keys.append(ReturnKey(element.tag, keyword, vr, str(element.VR)))
    return keys


def query_level(identifier: Dataset, model: QueryModel) -> str:
    """The identifier's QueryRetrieveLevel, checked against ``model``."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(f"unknown QueryRetrieveLevel {level!r}")
    if model is QueryModel.STUDY_ROOT and level == "PATIENT":
        raise QueryError("the Study Root model has no PATIENT level")
    return level


def _required(level: str, model: QueryModel) -> list[str]:
    """Unique keys of the levels above ``level`` that a hierarchical query must carry."""
    above = LEVELS[: LEVELS.index(level)]
    if model is QueryModel.STUDY_ROOT:
        above = tuple(name for name in above if name != "PATIENT")
    return [UNIQUE_KEYS[name] for name in above]


def build_select(
    identifier: Dataset,
    level: str,
    model: QueryModel,
    options: MatchOptions = DEFAULT_OPTIONS,
    *,
    hierarchical: bool = True,
    scope: ImagingScope | None = None,
) -> Select[Any]:
    """The select of the entities of ``level`` (and those above) matching ``identifier``,
    within ``scope`` (None: every row)."""
    for keyword in _required(level, model) if hierarchical else ():
        if not values_of(identifier.get(keyword)):
            raise QueryError(f"{keyword} is required at the {level} level")
    depth = LEVELS.index(level)
    entities = [ENTITIES[name] for name in LEVELS[: depth + 1]]
    statement: Select[Any] = select(*entities)
    if depth >= 1:
        statement = statement.join(Study, Study.patient_pk == Patient.pk)
    if depth >= 2:
        statement = statement.join(Series, Series.study_pk == Study.pk)
    if depth >= 3:
        statement = statement.join(Instance, Instance.series_pk == Series.pk)
    for element in identifier:
        keyword = element.keyword
        key = KEYS.get(keyword)
        if key is None or LEVELS.index(key.level) > depth or element.VR == "SQ":
            continue
        where = condition(key, element.value, options)
        if where is not None:
            statement = statement.where(where)
    if scope is not None:
        statement = statement.where(
            scope.patients() if depth == 0 else scope.studies() if depth == 1 else scope.series()
        )
    return statement.order_by(*(entity.pk for entity in entities))


def response(identifier: Dataset, level: str, match: Match) -> Dataset:
    """The response identifier of one match: exactly the requested keys, plus the level."""
    out = Dataset()
    for key, value in match:
        if value is None:
            empty = Sequence() if key.empty_vr == "SQ" else None
            out.add(DataElement(key.tag, key.empty_vr, empty, validation_mode=config.IGNORE))
        else:
            value = int(value) if key.vr in _BINARY_INTS else value
            out.add(DataElement(key.tag, key.vr, value, validation_mode=config.IGNORE))
    out.QueryRetrieveLevel = level
    texts = [text for _, value in match for text in values_of(value)]
    charset = response_character_set(identifier.get("SpecificCharacterSet"), texts)
    if charset is not None:
        out.SpecificCharacterSet = charset
    return out


def _value(session: Session, keyword: str, found: dict[str, Any]) -> Any:
    key = KEYS.get(keyword)
    if key is not None:
        entity = found.get(key.column.class_.__name__)
        if entity is None:
            return None
        value = getattr(entity, key.column.key)
        if value is None or value == "":
            return None
        if key.kind == "int":
            return str(value)
        if key.kind == "list":
            return value.split("\\")
        return value
    if keyword in COMPUTED:
        return _computed(session, keyword, found)
    return None


def _computed(session: Session, keyword: str, found: dict[str, Any]) -> Any:
    if keyword == "SOPClassesInStudy":
        study = found.get("Study")
        if study is None:
            return None
        rows = session.scalars(
            select(Instance.sop_class_uid)
            .distinct()
            .join(Series, Instance.series_pk == Series.pk)
            .where(Series.study_pk == study.pk)
            .order_by(Instance.sop_class_uid)
        ).all()
        return list(rows) or None
    patient = found.get("Patient")
    if patient is None:
        return None
    counted = {
        "NumberOfPatientRelatedStudies": func.count(distinct(Study.pk)),
        "NumberOfPatientRelatedSeries": func.sum(Study.number_of_study_related_series),
        "NumberOfPatientRelatedInstances": func.sum(Study.number_of_study_related_instances),
    }[keyword]
    total = session.scalar(select(counted).where(Study.patient_pk == patient.pk))
    return str(int(total or 0))


def is_non_ascii(value: Any) -> bool:
    """Whether a value (or one of its values) has non-ASCII characters."""
    return any(not str(item).isascii() for item in values_of(value))


def _unicode_lower(session: Session) -> None:
    """On SQLite, replace the ASCII-only built-in ``lower()`` by Python's, so that PN
    matching is case-insensitive for Cyrillic names too (PostgreSQL's is already)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None:
        raw.create_function("lower", 1, _lower, deterministic=True)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
