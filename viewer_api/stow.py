"""STOW-RS semantics (PS3.18 10.5): one part -> ingest -> a result; results -> the response.

Every part goes through the archive's one ingest path (``IngestService.store_part10``), the
same as C-STORE. This module knows nothing of HTTP framing: the router hands it the parts'
bytes and turns what it returns into a response. Status values are those of PS3.18 table
10.5.3-2 (Store Instances Response Module); the mapping from ``StoreStatus`` mirrors the
C-STORE SCP's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from pacs.dimse import status
from pacs.dimse.store import warning_status
from pacs.ingest import IngestService, Source, StoreStatus
from pacs.ingest.acceptance import as_part10
from pacs.storage import is_valid_uid
from viewer_api.negotiation import DICOM

log = logging.getLogger(__name__)

# FailureReason (0008,1197) and WarningReason (0008,1196) values (PS3.18 table 10.5.3-2) are
# the DIMSE codes of pacs.dimse.status; DATA_SET_DOES_NOT_MATCH_SOP_CLASS also refuses an
# instance of another study than the target.

# (failure reason, warning reason) per ingest outcome; (None, None) is a plain success
OUTCOME_REASONS: dict[StoreStatus, tuple[int | None, int | None]] = {
    StoreStatus.STORED: (None, None),
    StoreStatus.DUPLICATE: (None, None),
    StoreStatus.REPLACED: (None, None),
    StoreStatus.CONFLICT_KEPT: (None, status.COERCION_OF_DATA_ELEMENTS),
    StoreStatus.CONFLICT_REJECTED: (status.DUPLICATE_SOP_INSTANCE, None),
    StoreStatus.IDENTITY_CONFLICT: (status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, None),
    StoreStatus.QUARANTINED: (None, status.COERCION_OF_DATA_ELEMENTS),
    StoreStatus.INVALID: (status.CANNOT_UNDERSTAND, None),
    StoreStatus.SOP_CLASS_NOT_SUPPORTED: (status.SOP_CLASS_NOT_SUPPORTED, None),
    StoreStatus.TOO_LARGE: (status.OUT_OF_RESOURCES, None),
    StoreStatus.FAILED: (status.OUT_OF_RESOURCES, None),
}

_IDENTITY_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The UIDs of a part, each empty unless present and a valid UID."""

    readable: bool = False
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


def identify(data: bytes) -> Identity:
    """Read the identifying UIDs of a Part-10 object without validating the rest."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
        meta = ds.file_meta
        values = (
            ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"),
            ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID"),
            ds.get("StudyInstanceUID"),
            ds.get("SeriesInstanceUID"),
        )
    except Exception:  # pydicom raises many types on data that is not DICOM
        return Identity()
    uids = [str(v) if is_valid_uid(str(v)) else "" for v in values]
    return Identity(True, *uids)


@dataclass(frozen=True, slots=True)
class PartResult:
    """What became of one part: a success (maybe with a warning) or a failure."""

    identity: Identity
    failure: int | None = None
    warning: int | None = None
    reason: str = ""  # for the log; never contains patient identifiers
    ingested: bool = False  # True when ingest decided (and logged a refusal itself)
    quarantined: bool = False  # held out of the archive: no RetrieveURL

    @property
    def retrievable(self) -> bool:
        """True when the instance can be retrieved (stored and not quarantined)."""
        return self.failure is None and not self.quarantined

    @property
    def stored(self) -> bool:
        """True when the instance is in the archive (perhaps with a warning)."""
        return self.failure is None


def store_part(
    ingest: IngestService,
    data: bytes | None,
    content_type: str,
    source: Source,
    study_instance_uid: str | None = None,
) -> PartResult:
    """Store one part through ingest. ``data`` is None for a part over the size limit;
    ``study_instance_uid`` is the target study of ``POST /studies/{study}``."""
    if content_type != DICOM:
        return PartResult(Identity(), status.CANNOT_UNDERSTAND, reason="part is not DICOM")
    if data is None:
        return PartResult(Identity(), status.OUT_OF_RESOURCES, reason="part too large")
    data = as_part10(data)  # the acceptance rule's encodings, also for reading the UIDs
    identity = identify(data)
    if study_instance_uid is not None and identity.study_instance_uid != study_instance_uid:
        if not identity.readable:
            return PartResult(identity, status.CANNOT_UNDERSTAND, reason="not a DICOM object")
        return PartResult(
            identity, status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, reason="another study"
        )
    try:
        outcome = ingest.store_part10(data, source)
    except Exception:  # ingest answers failures itself; this is a bug, not the sender's
        log.exception("STOW-RS ingest failed")
        return PartResult(identity, status.PROCESSING_FAILURE, reason="internal error")
    failure, warning = OUTCOME_REASONS[outcome.status]
    quarantined = outcome.status is StoreStatus.QUARANTINED
    reason = f"{outcome.status}: {outcome.reason}"
    if outcome.warnings and warning is None:
        warning = warning_status(outcome.warnings)
        reason = f"{outcome.status}: {'; '.join(outcome.warnings)}"
    return PartResult(identity, failure, warning, reason, True, quarantined)


def http_status(results: list[PartResult]) -> int:
    """200 all stored, 202 some failed or any warning, 409 none stored (PS3.18 10.5.3)."""
    failed = sum(1 for r in results if not r.stored)
    if results and failed == len(results):
        return 409
    if failed or any(r.warning is not None for r in results):
        return 202
    return 200


def warning_header(results: list[PartResult]) -> str | None:
    """A ``Warning`` header (PS3.18 8.5, code 299) naming each identity conflict, which a
    FailureReason or WarningReason code alone cannot; None when there was none."""
    prefixes = (f"{StoreStatus.IDENTITY_CONFLICT}: ", f"{StoreStatus.QUARANTINED}: ")
    reasons = dict.fromkeys(
        r.reason.replace('"', "'") for r in results if r.reason.startswith(prefixes)
    )
    return ", ".join(f'299 - "{reason}"' for reason in reasons) or None


def response_dataset(
    results: list[PartResult], dicomweb_base: str, study_instance_uid: str | None = None
) -> Dataset:
    """The Store Instances Response (RetrieveURL, ReferencedSOPSequence, FailedSOPSequence).

    ``dicomweb_base`` is the absolute URL of the DICOMweb root (``.../dicomweb``). The study's
    RetrieveURL is given for ``/studies/{study}`` and when every stored instance is of one study.
    """
    response = Dataset()
    studies = {r.identity.study_instance_uid for r in results if r.retrievable}
    study = study_instance_uid or (studies.pop() if len(studies) == 1 else "")
    if study:
        response.RetrieveURL = f"{dicomweb_base}/studies/{study}"
    referenced, failed = [], []
    for result in results:
        item = Dataset()
        item.ReferencedSOPClassUID = result.identity.sop_class_uid
        item.ReferencedSOPInstanceUID = result.identity.sop_instance_uid
        if result.stored:
            if result.retrievable:
                item.RetrieveURL = _instance_url(dicomweb_base, result.identity)
            if result.warning is not None:
                item.WarningReason = result.warning
            referenced.append(item)
        else:
            item.FailureReason = result.failure
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = referenced
    if failed:
        response.FailedSOPSequence = failed
    return response


def response_json(dataset: Dataset) -> dict[str, Any]:
    """``dataset`` in the DICOM JSON model (PS3.18 F.2)."""
    return dataset.to_json_dict()


def _instance_url(base: str, identity: Identity) -> str:
    return (
        f"{base}/studies/{identity.study_instance_uid}"
        f"/series/{identity.series_instance_uid}/instances/{identity.sop_instance_uid}"
    )
