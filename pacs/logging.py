"""Logging set-up shared by every process.

Log lines carry UIDs, AE titles and addresses, never patient names or identifiers, unless
``log_phi`` is set; pynetdicom's own per-message logging (which dumps identifiers) is kept at
WARNING unless ``log_phi`` is on.
"""

from __future__ import annotations

import logging

from pacs.config import Settings


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once per process."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    if not settings.log_phi:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
