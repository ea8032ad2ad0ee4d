"""Find the instances a WADO-RS path (study / series / instance) names, with their metadata
documents."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, and_, select

from pacs.errors import PacsError
from pacs.index.models import Patient, Series, Study
from pacs.metadata.records import INSTANCE, MetadataRow, backfill, load
from pacs.storage import is_valid_uid
from pacs.storage.base import ObjectStore


class NotFound(PacsError, LookupError):
    """The path names no stored instance (HTTP 404)."""


class BadPath(PacsError, ValueError):
    """A path segment is not a valid UID (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The instances of a request and the UIDs of their series (series pk -> UIDs)."""

    rows: list[MetadataRow]
    series: dict[int, tuple[str, str]]


def select_instances(
    engine: Engine,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    documents: bool = True,
    scope: ColumnElement[bool] | None = None,
) -> Selection:
    """The instances under study / series / instance, all UIDs required to agree (an
    instance UID under another study is not found); only series within ``scope`` (a
    condition on series, study and patient: ``ImagingScope.series()``). Raise NotFound or
    BadPath."""
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None and not is_valid_uid(uid):
            raise BadPath(f"{name} UID is not a valid UID")
    query = (
        select(Series.pk, Series.series_instance_uid)
        .join(Study, Series.study_pk == Study.pk)
        .where(Study.study_instance_uid == study)
    )
    if series is not None:
        query = query.where(Series.series_instance_uid == series)
    if scope is not None:
        query = query.join(Patient, Study.patient_pk == Patient.pk).where(scope)
    with engine.connect() as conn:
        found = {pk: (study, uid) for pk, uid in conn.execute(query)}
        if not found:
            raise NotFound("series" if series else "study")
        where: ColumnElement[bool] = INSTANCE.c.series_pk.in_(list(found))
        if instance is not None:
            where = and_(where, INSTANCE.c.sop_instance_uid == instance)
        rows = load(conn, where, documents=documents)
    if not rows:
        raise NotFound("instance" if instance else "series" if series else "study")
    return Selection(rows, found)


def with_documents(engine: Engine, store: ObjectStore, selection: Selection) -> Selection:
    """Backfill documents missing for objects stored before the metadata table existed."""
    if any(row.document is None for row in selection.rows):
        backfill(engine, store, selection.rows, selection.series)
    return selection
