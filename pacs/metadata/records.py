"""The ``instance_metadata`` table: one compressed metadata document per instance.

Rows are written by ingest inside the instance's own index transaction (``record``) and go
with the instance row (``ON DELETE CASCADE``), so a replaced or deleted instance never leaves
a stale document behind. Instances stored before this table existed, or whose document has
an older ``FORMAT_VERSION``, get one on first read (``backfill``).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    Table,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, Instance
from pacs.metadata.document import FORMAT_VERSION, FrameIndex, MetadataDocument, build_document
from pacs.storage.base import ObjectStore

if TYPE_CHECKING:
    from pacs.ingest.attributes import InstanceAttributes

log = logging.getLogger(__name__)


class InstanceMetadata(Base):
    """The DICOM JSON of one instance without bulk data (zlib), and its frame index."""

    __tablename__ = "instance_metadata"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instance.pk", ondelete="CASCADE"), primary_key=True
    )
    format_version: Mapped[int] = mapped_column(Integer)
    document: Mapped[bytes] = mapped_column(LargeBinary)
    frame_index: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


METADATA: Table = InstanceMetadata.__table__  # type: ignore[assignment]
INSTANCE: Table = Instance.__table__  # type: ignore[assignment]

_FIND_PK = select(INSTANCE.c.pk).where(INSTANCE.c.sop_instance_uid == bindparam("uid"))


def document_for_ingest(data: bytes, attrs: InstanceAttributes) -> MetadataDocument | None:
    """The document of an object being ingested; None (and a log line) if it cannot be built,
    which never fails the ingest: the document is then built on first read."""
    try:
        return build_document(
            data,
            attrs.study_instance_uid,
            attrs.series_instance_uid,
            attrs.sop_instance_uid,
            attrs.transfer_syntax_uid,
        )
    except Exception as exc:
        log.warning("metadata document not built at ingest: %s", type(exc).__name__)
        return None


def record(conn: Connection, sop_instance_uid: str, doc: MetadataDocument) -> None:
    """Store ``doc`` for the just inserted instance, in the caller's transaction."""
    pk = conn.execute(_FIND_PK, {"uid": sop_instance_uid}).scalar_one()
    conn.execute(insert(METADATA).values(_values(pk, doc)))


def _values(pk: int, doc: MetadataDocument) -> dict[str, object]:
    return {
        "instance_pk": pk,
        "format_version": FORMAT_VERSION,
        "document": doc.compressed(),
        "frame_index": doc.frames.to_bytes() if doc.frames else None,
    }


@dataclass(slots=True)
class MetadataRow:
    """One instance of a metadata read, with its document (None until backfilled)."""

    instance_pk: int
    series_pk: int
    sop_instance_uid: str
    sha256: str
    object_key: str
    transfer_syntax_uid: str
    document: bytes | None  # zlib-compressed JSON
    frame_index: bytes | None

    def json(self) -> bytes:
        """The uncompressed DICOM JSON (base placeholders still in)."""
        if self.document is None:
            raise ValueError("document not loaded")
        return zlib.decompress(self.document)

    def frames(self) -> FrameIndex | None:
        """The frame index, if the instance has one."""
        return FrameIndex.from_bytes(self.frame_index) if self.frame_index else None


def load(conn: Connection, where: Any, *, documents: bool = True) -> list[MetadataRow]:
    """Instances matching ``where`` (a clause on the instance table), in series order
    (InstanceNumber, then arrival), with their documents and frame indexes when
    ``documents``; one indexed query."""
    columns = [
        INSTANCE.c.pk,
        INSTANCE.c.series_pk,
        INSTANCE.c.sop_instance_uid,
        INSTANCE.c.sha256,
        INSTANCE.c.object_key,
        INSTANCE.c.transfer_syntax_uid,
    ]
    if not documents:
        query = select(*columns).where(where)
    else:
        query = select(
            *columns, METADATA.c.format_version, METADATA.c.document, METADATA.c.frame_index
        ).select_from(INSTANCE.outerjoin(METADATA, METADATA.c.instance_pk == INSTANCE.c.pk))
        query = query.where(where)
    query = query.order_by(INSTANCE.c.series_pk, INSTANCE.c.instance_number, INSTANCE.c.pk)
    rows = []
    for row in conn.execute(query):
        current = documents and row[6] == FORMAT_VERSION
        rows.append(
            MetadataRow(
                instance_pk=row[0],
                series_pk=row[1],
                sop_instance_uid=row[2],
                sha256=row[3],
                object_key=row[4],
                transfer_syntax_uid=row[5],
                document=row[7] if current else None,
                frame_index=row[8] if current else None,
            )
        )
    return rows


def content_tag(rows: Sequence[MetadataRow]) -> str:
    """A strong validator of these instances' content: changes whenever an instance is
    added, replaced or removed, or the document format changes."""
    digest = hashlib.blake2b(f"v{FORMAT_VERSION}".encode(), digest_size=16)
    for row in rows:
        digest.update(f"{row.instance_pk}:{row.sha256};".encode())
    return digest.hexdigest()


def backfill(
    engine: Engine,
    store: ObjectStore,
    rows: Sequence[MetadataRow],
    uids: dict[int, tuple[str, str]],
) -> None:
    """Build the missing documents of ``rows`` from their stored objects and save them.

    ``uids`` maps a series pk to its (StudyInstanceUID, SeriesInstanceUID). A row whose
    object cannot be read or parsed keeps ``document`` None (the caller decides).
    """
    for row in rows:
        if row.document is not None:
            continue
        study_uid, series_uid = uids[row.series_pk]
        try:
            data = store.get(row.object_key)
            doc = build_document(
                data, study_uid, series_uid, row.sop_instance_uid, row.transfer_syntax_uid
            )
        except Exception as exc:
            log.warning("metadata backfill failed for an instance: %s", type(exc).__name__)
            continue
        values = _values(row.instance_pk, doc)
        try:
            with engine.begin() as conn:
                conn.execute(delete(METADATA).where(METADATA.c.instance_pk == row.instance_pk))
                conn.execute(insert(METADATA).values(values))
        except IntegrityError:  # the instance went away meanwhile, or a concurrent backfill
            log.info("metadata backfill skipped: instance changed meanwhile")
        row.document = values["document"]  # type: ignore[assignment]
        row.frame_index = values["frame_index"]  # type: ignore[assignment]
