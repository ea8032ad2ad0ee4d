"""Quiet by default: third-party loggers at WARNING unless PACS_LOG_LEVEL=DEBUG."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pacs.config import Settings
from pacs.logging import configure_logging

_PROBE = """
import logging
from pacs.config import Settings
from pacs.logging import configure_logging
configure_logging(Settings())
for name in ("highdicom.seg", "alembic.runtime.migration", "uvicorn.error", "pynetdicom.acse",
             "pacs.jobs.worker", "viewer_api.app", "inference.pipeline"):
    logger = logging.getLogger(name)
    logger.debug("%s debug", name)
    logger.info("%s info", name)
    logger.warning("%s warning", name)
"""


def logged(**env: str) -> str:
    """What a fresh process configured with ``env`` prints when every logger logs."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stderr


def test_default_info_keeps_third_party_loggers_at_warning() -> None:
    out = logged()
    for name in ("highdicom.seg", "alembic.runtime.migration", "uvicorn.error", "pynetdicom.acse"):
        assert f"{name} info" not in out
        assert f"{name} warning" in out
    for name in ("pacs.jobs.worker", "viewer_api.app", "inference.pipeline"):
        assert f"{name} info" in out
        assert f"{name} debug" not in out


def test_debug_shows_third_party_info_but_pynetdicom_only_with_log_phi() -> None:
    out = logged(PACS_LOG_LEVEL="DEBUG")
    assert "highdicom.seg info" in out and "alembic.runtime.migration debug" in out
    assert "pacs.jobs.worker debug" in out
    assert "pynetdicom.acse info" not in out  # it dumps identifiers
    assert "pynetdicom.acse info" in logged(PACS_LOG_LEVEL="DEBUG", PACS_LOG_PHI="true")


def test_warning_level_quiets_first_party_info_too() -> None:
    out = logged(PACS_LOG_LEVEL="WARNING")
    assert "pacs.jobs.worker info" not in out and "pacs.jobs.worker warning" in out
    assert "highdicom.seg warning" in out


def test_unknown_log_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(Settings(log_level="loud"))
