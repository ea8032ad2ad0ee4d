"""Logging set-up shared by every process.

Quiet by default: the archive's own loggers (``pacs``, ``viewer_api``, ``inference``) log at
``log_level``; third-party libraries (highdicom, alembic, uvicorn, pynetdicom, ...) only from
WARNING on, unless ``log_level`` is DEBUG. Log lines carry UIDs, AE titles and addresses, never
patient names or identifiers, unless ``log_phi`` is set; pynetdicom's own per-message logging
(which dumps identifiers) stays at WARNING even at DEBUG unless ``log_phi`` is on.
"""

from __future__ import annotations

import logging

from pacs.config import Settings

FIRST_PARTY_LOGGERS = ("pacs", "viewer_api", "inference")
"""Loggers of this project; every other logger is third-party."""
THIRD_PARTY_QUIET_LEVEL = logging.WARNING
"""The least severe level third-party loggers print unless ``log_level`` is DEBUG."""


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once per process (a no-op for the root when the process
    already has handlers) and the levels of the first-party loggers."""
    level = logging.getLevelNamesMapping().get(settings.log_level.upper())
    if level is None:
        raise ValueError(f"unknown log level {settings.log_level!r} (PACS_LOG_LEVEL)")
    third_party = level if level <= logging.DEBUG else max(level, THIRD_PARTY_QUIET_LEVEL)
    logging.basicConfig(
        level=third_party,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    for name in FIRST_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if not settings.log_phi:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
