"""Helpers of the lifecycle / job tests: studies made in code, a rules file, polling."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from pacs.changes import read_since
from pacs.ingest import IngestService, Source, StoreStatus
from pacs.jobs.models import Job
from testkit.dicom_factory import ct_slice

MODALITY = Source(channel="dimse", ae_title="CT1", host="127.0.0.1")

TEST_RULES = """\
rules:
  - name: any-ct
    analysis: test
    priority: 5
    when:
      modality: [CT]
"""


def rules_file(folder: Path, text: str = TEST_RULES) -> Path:
    """Write a rules file and return its path."""
    path = folder / "rules.yaml"
    path.write_text(text)
    return path


def part10(study: str, series: str, index: int, size: int = 8) -> bytes:
    """A small CT slice as Part-10 bytes."""
    buffer = io.BytesIO()
    ct_slice(study, series, index, size=size).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_study(
    ingest: IngestService,
    slices: int = 2,
    series: int = 1,
    study: str | None = None,
    source: Source = MODALITY,
) -> str:
    """Ingest a synthetic CT study; return its StudyInstanceUID."""
    study = study or generate_uid()
    for _ in range(series):
        series_uid = generate_uid()
        for i in range(slices):
            outcome = ingest.store_part10(part10(study, series_uid, i), source)
            assert outcome.status is StoreStatus.STORED, outcome
    return study


def events(engine: Engine, kind: str | None = None, study: str | None = None) -> list[Any]:
    """Every change event (optionally of one kind / study)."""
    with engine.connect() as conn:
        found = read_since(conn, 0, limit=100_000, kinds={kind} if kind else None)
    return [e for e in found if study is None or e.study_instance_uid == study]


def jobs_of(engine: Engine, study: str | None = None) -> list[Any]:
    """Job rows, oldest first."""
    query = select(Job).order_by(Job.pk)
    if study:
        query = query.where(Job.study_instance_uid == study)
    with engine.connect() as conn:
        return list(conn.execute(query).fetchall())


def count_jobs(engine: Engine, status: str) -> int:
    """Jobs in ``status``."""
    with engine.connect() as conn:
        return int(
            conn.scalar(select(func.count()).select_from(Job).where(Job.status == status)) or 0
        )


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
