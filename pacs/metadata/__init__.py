"""Per-instance metadata documents (DICOM JSON) and frame indexes, kept in the index.

Written at ingest in the same transaction as the instance row, so WADO-RS answers a series'
``metadata`` from one indexed query instead of reading every stored object.
"""

from pacs.metadata.document import (
    BASE_PLACEHOLDER,
    FORMAT_VERSION,
    FrameIndex,
    MetadataDocument,
    build_document,
)

__all__ = ["BASE_PLACEHOLDER", "FORMAT_VERSION", "FrameIndex", "MetadataDocument", "build_document"]
