"""``pacs retrieve``: C-MOVE from Orthanc (a real remote PACS) into the running archive."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
from typer.testing import CliRunner

from pacs.cli import app
from testkit.dicom_factory import write_ct_series
from testkit.orthanc import running_orthanc
from tests.conftest import RunningArchive, free_port, require_tool
from tests.dimse_tools import archive_view, storescu


def cli(archive: RunningArchive, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={**archive.backend.env, "COLUMNS": "200"})
    return result.exit_code, result.output


def test_retrieve_a_study_from_orthanc(archive: RunningArchive, tmp_path: Path) -> None:
    binary = require_tool("Orthanc")
    require_tool("storescu")
    dicom_port, http_port = free_port(), free_port()
    destination = {"archive": ("PACS", "127.0.0.1", archive.dicom_port)}
    files = write_ct_series(tmp_path / "ct", slices=4, size=64)
    other = write_ct_series(tmp_path / "other", slices=2, size=64)
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    with running_orthanc(binary, tmp_path / "orthanc", dicom_port, http_port, destination) as base:
        sent = storescu(dicom_port, [*files, *other])
        assert sent.succeeded == {*files, *other}, sent.output[-2000:]
        assert httpx.get(f"{base}/statistics").json()["CountInstances"] == 6
        assert cli(archive, "ae", "add", "ORTHANC", "127.0.0.1", str(dicom_port))[0] == 0

        code, output = cli(archive, "retrieve", study, "--from", "ORTHANC")
        assert code == 0, output
        assert "completed 4, warning 0, failed 0" in output, output

        code, output = cli(archive, "retrieve", "1.2.3.4.5.6", "--from", "NOBODY")
        assert code == 2 and "NOBODY" in output, output
        code, output = cli(archive, "retrieve", "1.2/../x", "--from", "ORTHANC")
        assert code == 2 and "not a valid UID" in output, output

    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
    expected = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert set(rows) == expected  # the study only, not the other one Orthanc holds
    listed = httpx.get(f"{archive.http}/api/studies").json()["items"]
    assert [(s["study_instance_uid"], s["number_of_instances"]) for s in listed] == [(study, 4)]
