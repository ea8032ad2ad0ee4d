"""The one ingest path shared by C-STORE, STOW-RS and ``pacs import``."""

from pacs.ingest.service import IngestOutcome, IngestService, StoreStatus
from pacs.ingest.source import Source

__all__ = ["IngestOutcome", "IngestService", "Source", "StoreStatus"]
