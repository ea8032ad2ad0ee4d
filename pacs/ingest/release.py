"""Resolving a quarantine entry: release it into the archive, or discard it.

What an administrator does with an object held for an identity conflict:

- **release** (the conflict is gone: the other patient's study was corrected or removed, or
  the entry's patient was corrected at the source and the wrong objects discarded): the held
  object goes through ingest again, with the identity check, and is refused (kept held, the
  reason given) while the conflict is still there. Nothing is ever merged by a release.
- **release as a new study** (two patients' objects really share UIDs, e.g. a modality that
  reused a Study Instance UID): the object gets new Study, Series and SOP Instance UIDs
  (``2.25`` UUID-derived, the same for every object of one held study and patient, so a held
  study stays one study) and the UIDs it had are kept in its Original Attributes Sequence
  (PS3.3 C.12.1.1.9, reason ``CORRECT``). It is then ingested with the identity check too.
- **discard**: the entry and its object are deleted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.errors import StorageError
from pacs.index.models import utcnow
from pacs.ingest.quarantine import Held, QuarantineError, get_held, remove
from pacs.ingest.service import IngestOutcome, IngestService

_NAMESPACE = uuid.UUID("8f4f1f8e-5a0b-4f4e-9d55-6d1c0a3f2b10")  # of the UIDs made on release


@dataclass(frozen=True, slots=True)
class Released:
    """What became of a release: the ingest outcome; the entry is gone when ``released``."""

    pk: int
    outcome: IngestOutcome

    @property
    def released(self) -> bool:
        """True when the object is now in the archive (and no longer held)."""
        return self.outcome.status.ok


def release(ingest: IngestService, pk: int, as_new_study: bool = False) -> Released:
    """Ingest held entry ``pk`` again (with new UIDs when ``as_new_study``); remove it from
    the quarantine once it is archived. Raises ``QuarantineError`` for an unknown entry."""
    held = get_held(ingest.engine, pk)
    try:
        data = ingest.store.get(held.object_key)
    except (KeyError, StorageError) as exc:
        raise QuarantineError(f"quarantine entry {pk}: object unreadable: {exc}") from exc
    if as_new_study:
        data = with_new_uids(data, held)
    outcome = ingest.store_part10(data, held.source, quarantine=False)
    if outcome.status.ok:
        remove(ingest.engine, ingest.store, held)
    return Released(pk, outcome)


def discard(ingest: IngestService, pk: int) -> Held:
    """Delete held entry ``pk`` and its object; returns what was discarded."""
    held = get_held(ingest.engine, pk)
    remove(ingest.engine, ingest.store, held)
    return held


def new_uid(kind: str, uid: str, held: Held) -> str:
    """A ``2.25`` UID for ``uid`` of ``held``'s patient: the same for every object of one
    held study and patient, another for another patient."""
    name = "|".join((kind, uid, held.patient_id, held.issuer_of_patient_id))
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def with_new_uids(data: bytes, held: Held) -> bytes:
    """``data`` with new Study, Series and SOP Instance UIDs, the old ones in its Original
    Attributes Sequence."""
    ds = dcmread(BytesIO(data))
    original = Dataset()
    original.StudyInstanceUID = ds.StudyInstanceUID
    original.SeriesInstanceUID = ds.SeriesInstanceUID
    original.SOPInstanceUID = ds.SOPInstanceUID
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([original])
    item.AttributeModificationDateTime = utcnow().strftime("%Y%m%d%H%M%S")
    item.ModifyingSystem = "PACS quarantine"
    item.SourceOfPreviousValues = held.source_ae_title or held.source_channel
    item.ReasonForTheAttributeModification = "CORRECT"
    ds.OriginalAttributesSequence = Sequence([*ds.get("OriginalAttributesSequence", []), item])
    ds.StudyInstanceUID = new_uid("study", held.study_instance_uid, held)
    ds.SeriesInstanceUID = new_uid("series", held.series_instance_uid, held)
    ds.SOPInstanceUID = new_uid("instance", held.sop_instance_uid, held)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
