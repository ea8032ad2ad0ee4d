"""Storage Commitment: which referenced instances the archive can take responsibility for.

An instance is committed only when its index row exists with the requested SOP Class and the
object store returns bytes whose SHA-256 is the digest recorded at ingest (the bytes are read
and hashed on every request: a lost or damaged object is never committed). Failure reasons are
PS3.4 J.3.2.1.1.3's: 0112 no such object instance, 0119 class-instance conflict, 0110
processing failure (unreadable or damaged object).

Only instances within the caller's reach (``scope``, :mod:`pacs.security.imaging`) are looked
up: an instance outside it fails with 0112, the same answer as an unknown one, so a request
can neither commit another organisation's instances nor learn that they exist.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from pacs.index.models import Instance, Patient, Series, Study
from pacs.security.imaging import ImagingScope
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)

NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
_CHUNK = 500


@dataclass(frozen=True)
class Reference:
    """A referenced SOP instance (ReferencedSOPClassUID, ReferencedSOPInstanceUID)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class CommitmentResult:
    """Committed references and failed ones with their FailureReason."""

    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)


def verify(
    engine: Engine,
    store: ObjectStore,
    references: Sequence[Reference],
    scope: ImagingScope | None = None,
) -> CommitmentResult:
    """Check every reference against the index and the object store, within ``scope`` (the
    caller's reach; None: every instance); never raises for one object."""
    rows: dict[str, tuple[str, str, str]] = {}
    uids = sorted({r.sop_instance_uid for r in references})
    with engine.connect() as conn:
        for start in range(0, len(uids), _CHUNK):
            query = select(
                Instance.sop_instance_uid,
                Instance.sop_class_uid,
                Instance.object_key,
                Instance.sha256,
            ).where(Instance.sop_instance_uid.in_(uids[start : start + _CHUNK]))
            if scope is not None:
                query = (
                    query.join(Series, Instance.series_pk == Series.pk)
                    .join(Study, Series.study_pk == Study.pk)
                    .join(Patient, Study.patient_pk == Patient.pk)
                    .where(scope.series())
                )
            for uid, sop_class, key, digest in conn.execute(query):
                rows[uid] = (sop_class, key, digest)
    result = CommitmentResult()
    for reference in references:
        reason = _check(store, reference, rows.get(reference.sop_instance_uid))
        if reason is None:
            result.committed.append(reference)
        else:
            result.failed.append((reference, reason))
    return result


def _check(
    store: ObjectStore, reference: Reference, row: tuple[str, str, str] | None
) -> int | None:
    if row is None:
        return NO_SUCH_OBJECT_INSTANCE
    sop_class, key, digest = row
    if sop_class != reference.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    try:
        data = store.get(key)
    except Exception as exc:  # any store failure fails this object only
        log.warning("commitment: instance %s unreadable: %s", reference.sop_instance_uid, exc)
        return PROCESSING_FAILURE
    if hashlib.sha256(data).hexdigest() != digest:
        log.error("commitment: instance %s does not match its digest", reference.sop_instance_uid)
        return PROCESSING_FAILURE
    return None
