"""The derived-object rule: which stored objects are new source images.

For the study lifecycle, and so for the AI, a new study version means "new source images
arrived". An object is *derived* when any of these holds, whoever sent it:

1. the archive's own store path stored it (``Source.derived``: the AI's SEG and SR, the
   radiologist's verified SR);
2. it carries the archive's creator marker (Manufacturer ``ARCHIVE_MANUFACTURER``): one of
   our own derived objects sent back to us, e.g. by another PACS or a viewer;
3. its SOP Class is not an acquired image: structured reports and key object selections,
   presentation states, segmentations, registrations, fiducials, raw data, encapsulated
   documents.

A derived object is stored, indexed and announced (``instance.stored``, ``series.added``)
like any other, but it never re-opens a study's version and so never queues an analysis.
"""

from __future__ import annotations

from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.source import Source

ARCHIVE_MANUFACTURER = "PACS regional archive"
"""Manufacturer (0008,0070) of every object this archive creates."""

_STORAGE = "1.2.840.10008.5.1.4.1.1."
DERIVED_SOP_CLASS_PREFIXES = tuple(
    _STORAGE + suffix
    for suffix in (
        "88.",  # structured reports, key object selection (KOS)
        "11.",  # presentation states (PR)
        "66.",  # spatial registration, fiducials, segmentation (SEG), surfaces
        "104.",  # encapsulated PDF, CDA, STL, ...
    )
)
"""SOP Classes (by UID prefix) that hold no acquired image."""
RAW_DATA_STORAGE = _STORAGE + "66"


def is_derived(attrs: InstanceAttributes, source: Source) -> bool:
    """True when the object is not a new source image (see the module docstring)."""
    return (
        source.derived
        or attrs.manufacturer == ARCHIVE_MANUFACTURER
        or attrs.sop_class_uid.startswith(DERIVED_SOP_CLASS_PREFIXES)
        or attrs.sop_class_uid == RAW_DATA_STORAGE
    )
