"""The newcomer's path: echo, store a few CT slices with storescu, see them at /api/studies."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select

from pacs.index.engine import create_index_engine, session_factory
from pacs.index.models import Instance
from pacs.storage import open_store
from testkit.dicom_factory import write_ct_series
from tests.conftest import RunningArchive, require_tool


def test_echo_store_and_list(archive: RunningArchive, tmp_path: Path) -> None:
    echoscu, storescu = require_tool("echoscu"), require_tool("storescu")
    files = write_ct_series(tmp_path / "ct", slices=5, size=64)
    port = str(archive.dicom_port)
    subprocess.run([echoscu, "-aec", "PACS", "127.0.0.1", port], check=True, timeout=30)
    subprocess.run(
        [storescu, "-aec", "PACS", "127.0.0.1", port, *map(str, files)], check=True, timeout=60
    )

    page = httpx.get(f"{archive.http}/api/studies").json()
    assert page["total"] == 1
    study = page["items"][0]
    assert study["number_of_instances"] == 5
    assert study["modalities_in_study"] == ["CT"]
    assert study["patient_name"] == "Phantom^Chest"

    settings = archive.backend.settings
    store = open_store(settings)
    with session_factory(create_index_engine(settings))() as session:
        rows = session.scalars(select(Instance)).all()
    assert len(rows) == 5
    sent = {f.read_bytes()[132:][-1000:] for f in files}
    for row in rows:
        stored = store.get(row.object_key)
        assert len(stored) == row.size_bytes
        assert stored[-1000:] in sent

    page_html = httpx.get(f"{archive.http}/").text
    assert "Phantom^Chest" in page_html
    assert "<td>CT</td>" in page_html
