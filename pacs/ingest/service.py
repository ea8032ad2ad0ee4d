"""Ingest: validate, store durably, index; the same code for every way an object arrives.

Order of work for one object: parse and validate -> digest -> object store ``put`` (durable)
-> one index transaction -> success. A failure at any step answers a failure and removes what
this call wrote, so nothing is ever half-stored: an index row always points to a complete
object. An object written whose index transaction never committed (process killed between the
two) is an orphan nobody sees; re-sending the instance rewrites the same key.

Patient identity (``pacs.identity``): an object whose SOP Instance UID is indexed in another
series or study, or whose SOP Instance, Series or Study UID or PatientID the index holds for
another patient, is never filed there. The index transaction checks it (``indexer``), so
concurrent senders cannot both win; the object is refused (``IDENTITY_CONFLICT``) or, with
the quarantine policy, held out of the archive (``QUARANTINED``, ``pacs.ingest.quarantine``).

What follows a stored instance (change feed, study lifecycle, ...) subscribes to ingest's
events (``pacs.ingest.events``), which run inside the index transaction.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from enum import StrEnum

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pacs import metrics
from pacs.config import DuplicatePolicy, IdentityConflictPolicy
from pacs.errors import (
    IdentityConflictError,
    InvalidDicomError,
    SOPClassNotSupportedError,
    StorageError,
)
from pacs.index.engine import WRITE, wal_group_commit, writer_turn
from pacs.ingest.acceptance import AcceptanceWarning, as_part10, meta_warnings
from pacs.ingest.attributes import InstanceAttributes, extract, parse_part10
from pacs.ingest.events import IngestEvents
from pacs.ingest.indexer import (
    INSTANCE,
    StoredInstance,
    check_instance_identity,
    delete_instance,
    find_instance,
    insert_instance,
)
from pacs.ingest.quarantine import QuarantineError, hold
from pacs.ingest.sameness import same_data_set
from pacs.ingest.source import Source
from pacs.ingest.structure import dataset_offset
from pacs.metadata import records as metadata_records
from pacs.storage.base import ObjectStore
from pacs.storage.keys import instance_key

log = logging.getLogger(__name__)


class StoreStatus(StrEnum):
    """How one ingest call ended."""

    STORED = "stored"  # new instance stored and indexed
    DUPLICATE = "duplicate"  # identical object already stored: idempotent success
    REPLACED = "replaced"  # different object, same SOP Instance UID, replaced (overwrite policy)
    CONFLICT_KEPT = "conflict_kept"  # different object refused, first one kept (keep policy)
    CONFLICT_REJECTED = "conflict_rejected"  # different object refused (reject policy)
    IDENTITY_CONFLICT = "identity_conflict"  # a UID held for another patient/study: refused
    QUARANTINED = "quarantined"  # identity conflict, held durably out of the archive
    INVALID = "invalid"  # not a storable DICOM object
    SOP_CLASS_NOT_SUPPORTED = "sop_class_not_supported"  # no storage SOP class (acceptance)
    TOO_LARGE = "too_large"  # larger than max_object_size
    FAILED = "failed"  # storage or database failure: nothing stored

    @property
    def ok(self) -> bool:
        """True when the sender may consider the object archived."""
        return self in {StoreStatus.STORED, StoreStatus.DUPLICATE, StoreStatus.REPLACED}


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """Result of one ingest call; ``reason`` is safe to log (no patient identifiers);
    ``warnings``: what a stored object's sender should be told (``pacs.ingest.acceptance``)."""

    status: StoreStatus
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    reason: str = ""
    warnings: tuple[AcceptanceWarning, ...] = ()


class IngestService:
    """Stores Part-10 objects in the object store and indexes them."""

    def __init__(
        self,
        store: ObjectStore,
        engine: Engine,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT,
        identity_conflict: IdentityConflictPolicy = IdentityConflictPolicy.REJECT,
        max_object_size: int = 2 * 1024**3,
        durable_commits: bool = True,
        events: IngestEvents | None = None,
    ) -> None:
        self.store = store
        self.events = events or IngestEvents()  # subscribers run in the index transaction
        self.engine = engine
        self.writer = engine.execution_options(**WRITE)
        # SQLite: commit without a sync under the write lock, flush the WAL before answering
        self._flush_commits = wal_group_commit(engine) if durable_commits else None
        self.duplicate_policy = duplicate_policy
        self.identity_conflict = identity_conflict
        self.max_object_size = max_object_size

    def store_part10(
        self, data: bytes, source: Source, quarantine: bool | None = None
    ) -> IngestOutcome:
        """Ingest one complete Part-10 object (preamble, file meta, dataset), byte-exact; a
        missing preamble is supplied. What is accepted: ``pacs.ingest.acceptance``.

        ``quarantine`` overrides the identity conflict policy (False: refuse, as a release
        from the quarantine does).
        """
        started = time.perf_counter()
        if quarantine is None:
            quarantine = self.identity_conflict == IdentityConflictPolicy.QUARANTINE
        outcome = self._store(as_part10(data), source, quarantine)
        metrics.record_ingest(source.channel, outcome.status, len(data), started)
        if not outcome.status.ok:
            log.warning(
                "%s from %s not archived: %s (%s)",
                outcome.sop_instance_uid or "object",
                source.ae_title or source.channel,
                outcome.status,
                outcome.reason,
            )
        elif outcome.warnings:
            log.warning(
                "%s from %s stored with a warning: %s",
                outcome.sop_instance_uid,
                source.ae_title or source.channel,
                "; ".join(outcome.warnings),
            )
        return outcome

    def _store(self, data: bytes, source: Source, quarantine: bool) -> IngestOutcome:
        if len(data) > self.max_object_size:
            return IngestOutcome(
                StoreStatus.TOO_LARGE, reason=f"{len(data)} bytes > {self.max_object_size}"
            )
        try:
            dataset = parse_part10(data)
            attrs = extract(dataset)
        except SOPClassNotSupportedError as exc:
            return IngestOutcome(StoreStatus.SOP_CLASS_NOT_SUPPORTED, reason=str(exc))
        except InvalidDicomError as exc:
            return IngestOutcome(StoreStatus.INVALID, reason=str(exc))
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            # one pooled connection for the duplicate check and the write transaction
            with self.writer.connect() as conn:
                outcome = self._store_new(conn, attrs, data, sha256, source, quarantine)
        except SQLAlchemyError as exc:
            return IngestOutcome(
                StoreStatus.FAILED, *_uids(attrs), reason=f"index: {type(exc).__name__}"
            )
        warnings = meta_warnings(dataset)
        return replace(outcome, warnings=warnings) if warnings and outcome.status.ok else outcome

    def _store_new(
        self,
        conn: Connection,
        attrs: InstanceAttributes,
        data: bytes,
        sha256: str,
        source: Source,
        quarantine: bool,
    ) -> IngestOutcome:
        known = find_instance(conn, attrs.sop_instance_uid)
        if known is not None:
            decided = self._against_known(known, attrs, data, sha256, source, quarantine)
            if decided is not None:
                return decided
            if self.duplicate_policy is not DuplicatePolicy.OVERWRITE:
                return self._refuse_conflict(attrs)
        key = instance_key(
            attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid, sha256
        )
        try:
            self.store.put(key, data)
        except StorageError as exc:
            return IngestOutcome(StoreStatus.FAILED, *_uids(attrs), reason=str(exc))
        return self._index(conn, attrs, key, data, sha256, source, known, quarantine)

    def _index(
        self,
        conn: Connection,
        attrs: InstanceAttributes,
        key: str,
        data: bytes,
        sha256: str,
        source: Source,
        replacing: StoredInstance | None,
        quarantine: bool,
    ) -> IngestOutcome:
        document = metadata_records.document_for_ingest(data, attrs)  # outside the lock
        try:
            with writer_turn(self.engine), conn.begin():
                if replacing is not None and not delete_instance(conn, replacing):
                    raise IntegrityError("replaced row changed meanwhile", None, Exception())
                new_series = insert_instance(conn, attrs, key, len(data), sha256, source)
                self.events.instance_indexed(conn, attrs, source, new_series)
                if document is not None:  # WADO-RS metadata, in the same transaction
                    metadata_records.record(conn, attrs.sop_instance_uid, document)
        except IdentityConflictError as exc:
            self._discard(key)
            return self._identity_conflict(attrs, data, sha256, source, quarantine, exc)
        except IntegrityError:
            # A concurrent sender committed the same SOP Instance UID first: decide again.
            return self._after_race(attrs, key, data, sha256, source, quarantine)
        except Exception as exc:  # database down, disk full, anything: nothing half-stored
            log.error("index transaction failed: %s", type(exc).__name__)
            self._discard(key)
            return IngestOutcome(
                StoreStatus.FAILED, *_uids(attrs), reason=f"index: {type(exc).__name__}"
            )
        if self._flush_commits is not None:
            try:
                self._flush_commits()
            except OSError as exc:  # committed but maybe not durable: the sender must retry
                return IngestOutcome(
                    StoreStatus.FAILED, *_uids(attrs), reason=f"index flush: {exc.strerror}"
                )
        if replacing is None:
            return IngestOutcome(StoreStatus.STORED, *_uids(attrs))
        if replacing.object_key != key:
            self._discard(replacing.object_key)
        log.warning("%s replaced by a different object", attrs.sop_instance_uid)
        return IngestOutcome(StoreStatus.REPLACED, *_uids(attrs), reason="overwrite policy")

    def _after_race(
        self,
        attrs: InstanceAttributes,
        key: str,
        data: bytes,
        sha256: str,
        source: Source,
        quarantine: bool,
    ) -> IngestOutcome:
        with self.engine.connect() as conn:
            known = find_instance(conn, attrs.sop_instance_uid)
        if known is not None and known.sha256 == sha256:
            return IngestOutcome(StoreStatus.DUPLICATE, *_uids(attrs), reason="identical")
        self._discard(key)
        if known is None:
            return IngestOutcome(StoreStatus.FAILED, *_uids(attrs), reason="index conflict")
        decided = self._against_known(known, attrs, data, sha256, source, quarantine)
        return decided if decided is not None else self._refuse_conflict(attrs)

    def _against_known(
        self,
        known: StoredInstance,
        attrs: InstanceAttributes,
        data: bytes,
        sha256: str,
        source: Source,
        quarantine: bool,
    ) -> IngestOutcome | None:
        """The outcome when the SOP Instance UID is stored already: a duplicate when ``data``
        is that object again, an identity conflict when it names another patient; None when
        it is a different object of the same patient (the duplicate policy decides)."""
        if self._identical(known, sha256, data, attrs):
            return IngestOutcome(StoreStatus.DUPLICATE, *_uids(attrs), reason="identical")
        try:
            check_instance_identity(known, attrs)
        except IdentityConflictError as exc:
            return self._identity_conflict(attrs, data, sha256, source, quarantine, exc)
        return None

    def _identical(
        self, known: StoredInstance, sha256: str, data: bytes, attrs: InstanceAttributes
    ) -> bool:
        """True when ``data`` is the stored object again, perhaps in another encoding.

        Over DIMSE the archive writes the file meta itself, while a file keeps the one its
        writer made, and a sender may re-encode the data set (``storescu`` does): one object
        imported or sent by STOW-RS and then by C-STORE (or the other way round) has two
        digests, yet it is an identical re-send when its data set has the same elements and
        values (``sameness``). The stored object is read only then.
        """
        if known.sha256 == sha256:
            return True
        try:
            stored = self.store.get(known.object_key)
            stored_syntax = parse_part10(stored).file_meta.get("TransferSyntaxUID")
        except (KeyError, StorageError, InvalidDicomError):
            return False
        if stored_syntax == attrs.transfer_syntax_uid and (
            memoryview(stored)[dataset_offset(stored) :] == memoryview(data)[dataset_offset(data) :]
        ):
            return True
        return same_data_set(stored, data)

    def _identity_conflict(
        self,
        attrs: InstanceAttributes,
        data: bytes,
        sha256: str,
        source: Source,
        quarantine: bool,
        conflict: IdentityConflictError,
    ) -> IngestOutcome:
        """Refuse the object, or hold it in the quarantine; never file it."""
        reason = str(conflict)
        if not quarantine:
            return IngestOutcome(StoreStatus.IDENTITY_CONFLICT, *_uids(attrs), reason=reason)
        try:
            hold(self.engine, self.store, attrs, data, sha256, source, reason)
        except QuarantineError as exc:
            return IngestOutcome(StoreStatus.FAILED, *_uids(attrs), reason=str(exc))
        return IngestOutcome(StoreStatus.QUARANTINED, *_uids(attrs), reason=reason)

    def _refuse_conflict(self, attrs: InstanceAttributes) -> IngestOutcome:
        status = (
            StoreStatus.CONFLICT_KEPT
            if self.duplicate_policy is DuplicatePolicy.KEEP
            else StoreStatus.CONFLICT_REJECTED
        )
        reason = "a different object with this SOP Instance UID is stored; the first is kept"
        return IngestOutcome(status, *_uids(attrs), reason=reason)

    def _discard(self, key: str) -> None:
        """Delete an object this call wrote, unless an index row refers to it."""
        try:
            with self.engine.connect() as conn:
                referenced = conn.scalar(
                    select(INSTANCE.c.pk).where(INSTANCE.c.object_key == key).limit(1)
                )
            if referenced is None:
                self.store.delete(key)
        except (SQLAlchemyError, StorageError) as exc:
            log.error("could not remove unindexed object %s: %s", key, exc)


def _uids(attrs: InstanceAttributes) -> tuple[str, str]:
    return attrs.sop_instance_uid, attrs.study_instance_uid
