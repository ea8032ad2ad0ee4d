"""The quarantine: objects held out of the archive because of a patient identity conflict.

With ``PACS_IDENTITY_CONFLICT=quarantine`` an object whose UIDs the index holds for another
patient (see ``pacs.identity``) is written under its own key (``quarantine/...``) with one
``quarantine`` row, and never indexed: no query (C-FIND, QIDO-RS, FHIR) and no retrieve
(C-MOVE, C-GET, WADO) can see it, because they all read the index tables. An administrator
lists the entries and releases (``pacs.ingest.release``) or discards them. The same object
sent again while it is held is the same entry (unique SOP Instance UID + digest).
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_serializer
from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from pacs.errors import PacsError, StorageError
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import Base, as_utc, utcnow
from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.source import Source
from pacs.storage.base import ObjectStore
from pacs.storage.keys import instance_key

log = logging.getLogger(__name__)


class QuarantineError(PacsError):
    """A quarantine entry that does not exist, or an object that could not be held."""


class QuarantineEntry(Base):
    """One object held in quarantine, with the patient it names and why it is held."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256", name="uq_quarantine_object"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(String(255))
    object_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source_channel: Mapped[str] = mapped_column(String(16), default="")
    source_ae_title: Mapped[str] = mapped_column(String(16), default="")
    source_host: Mapped[str] = mapped_column(String(64), default="")
    source_organisation: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


QUARANTINE: Table = QuarantineEntry.__table__  # type: ignore[assignment]


class Held(BaseModel):
    """A quarantine entry as an administrator sees it (patient fields included); a pydantic
    model so that ``/api/quarantine`` answers it as it is."""

    model_config = ConfigDict(frozen=True)

    pk: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    reason: str
    object_key: str
    size_bytes: int
    sha256: str
    source_channel: str
    source_ae_title: str
    source_host: str
    source_organisation: str
    received_at: datetime

    @property
    def source(self) -> Source:
        """Where the object came from, to be recorded when it is released."""
        return Source(
            self.source_channel, self.source_ae_title, self.source_host, self.source_organisation
        )

    @field_serializer("received_at")
    def _received_at(self, received_at: datetime) -> str:
        return as_utc(received_at).isoformat()


def quarantine_key(a: InstanceAttributes, sha256: str) -> str:
    """Object key of a held object: ``quarantine/`` + the key it would have in the archive."""
    return "quarantine/" + instance_key(
        a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid, sha256
    )


def hold(
    engine: Engine,
    store: ObjectStore,
    a: InstanceAttributes,
    data: bytes,
    sha256: str,
    source: Source,
    reason: str,
) -> None:
    """Write ``data`` to the quarantine durably, with its entry; raises ``QuarantineError``
    (nothing held) when the store or the index fails."""
    key = quarantine_key(a, sha256)
    try:
        store.put(key, data)
    except StorageError as exc:
        raise QuarantineError(f"quarantine store: {exc}") from exc
    values = {
        "sop_instance_uid": a.sop_instance_uid,
        "series_instance_uid": a.series_instance_uid,
        "study_instance_uid": a.study_instance_uid,
        "sop_class_uid": a.sop_class_uid,
        "patient_id": a.patient_id,
        "issuer_of_patient_id": a.issuer_of_patient_id,
        "patient_name": a.patient_name,
        "patient_birth_date": a.patient_birth_date,
        "patient_sex": a.patient_sex,
        "reason": reason[:255],
        "object_key": key,
        "size_bytes": len(data),
        "sha256": sha256,
        "source_channel": source.channel[:16],
        "source_ae_title": source.ae_title[:16],
        "source_host": source.host[:64],
        "source_organisation": source.organisation[:128],
        "received_at": utcnow(),
    }
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(QUARANTINE)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid", "sha256"])
    )
    try:
        with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
            conn.execute(statement)  # the same object held again: the entry it already has
    except SQLAlchemyError as exc:
        _delete_unless_held(engine, store, key)
        raise QuarantineError(f"quarantine index: {type(exc).__name__}") from exc


def list_held(engine: Engine, study_instance_uid: str | None = None) -> list[Held]:
    """Every held object (of one study when given), oldest first."""
    statement = select(QUARANTINE).order_by(QUARANTINE.c.pk)
    if study_instance_uid:
        statement = statement.where(QUARANTINE.c.study_instance_uid == study_instance_uid)
    with engine.connect() as conn:
        return [Held(**row._mapping) for row in conn.execute(statement)]


def get_held(engine: Engine, pk: int) -> Held:
    """The entry ``pk``; raises ``QuarantineError`` when there is none."""
    with engine.connect() as conn:
        row = conn.execute(select(QUARANTINE).where(QUARANTINE.c.pk == pk)).first()
    if row is None:
        raise QuarantineError(f"no quarantine entry {pk}")
    return Held(**row._mapping)


def remove(engine: Engine, store: ObjectStore, held: Held) -> None:
    """Delete the entry, then its object (released into the archive, or discarded)."""
    with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
        conn.execute(delete(QUARANTINE).where(QUARANTINE.c.pk == held.pk))
    _delete_unless_held(engine, store, held.object_key)


def _delete_unless_held(engine: Engine, store: ObjectStore, key: str) -> None:
    try:
        with engine.connect() as conn:
            still = conn.scalar(
                select(QUARANTINE.c.pk).where(QUARANTINE.c.object_key == key).limit(1)
            )
        if still is None:
            store.delete(key)
    except (SQLAlchemyError, StorageError) as exc:
        log.error("could not remove quarantined object %s: %s", key, exc)
