"""Object keys: built only from UIDs that passed validation, never from raw input strings."""

import re

from pacs.errors import InvalidDicomError

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component.
# Matched with ``fullmatch``: ``$`` would also accept a trailing newline.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (at most 64 characters)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.fullmatch(value))


def require_uid(name: str, value: object) -> str:
    """Return ``value`` if it is a valid UID, else raise ``InvalidDicomError`` naming it."""
    if value is None or value == "":
        raise InvalidDicomError(f"{name} is missing or empty")
    if not is_valid_uid(value):
        raise InvalidDicomError(f"{name} is not a valid UID: {str(value)[:80]!r}")
    return str(value)


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str, sha256: str) -> str:
    """Key of one stored object version: ``<study>/<series>/<instance>.<sha256[:16]>.dcm``.

    One directory per series (not per instance) keeps a new object to one file creation and
    one directory entry, so durable writes cost two fsyncs.

    The digest makes every distinct content its own key, so a racing or replacing write never
    clobbers an object another index row points to.
    """
    for name, uid in (
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("SOPInstanceUID", sop_instance_uid),
    ):
        require_uid(name, uid)
    if not _DIGEST.fullmatch(sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return f"{study_uid}/{series_uid}/{sop_instance_uid}.{sha256[:16]}.dcm"
