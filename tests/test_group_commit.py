"""SQLite group commit: ingest commits without a sync under the write lock, then flushes the
WAL before it answers, so an acknowledged instance is durable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from pacs.config import FsyncPolicy, Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from testkit.dicom_factory import write_ct_series


@pytest.mark.parametrize("policy", [FsyncPolicy.ALWAYS, FsyncPolicy.NEVER])
def test_wal_is_flushed_before_success_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: FsyncPolicy
) -> None:
    settings = Settings(data_dir=tmp_path / "var", storage_fsync=policy)
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    ingest = build_ingest(settings)
    [path] = write_ct_series(tmp_path / "ct", slices=1, size=16, study_uid=generate_uid())
    flushed: list[str] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    outcome = ingest.store_part10(path.read_bytes(), Source(channel="import"))
    assert outcome.status is StoreStatus.STORED
    wal = str(settings.data_dir.resolve() / "index.sqlite3-wal")
    with ingest.engine.connect() as conn:
        synchronous = conn.execute(text("PRAGMA synchronous")).scalar()
    if policy is FsyncPolicy.ALWAYS:
        assert flushed == [wal]  # the commit reached the disk before the success
        assert synchronous == 1  # NORMAL: no sync while the write lock is held
    else:
        assert flushed == []
        assert synchronous == 1
