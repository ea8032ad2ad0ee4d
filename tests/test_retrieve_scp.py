"""Query/Retrieve SCP, MOVE and GET: DCMTK movescu, getscu and storescp, Orthanc, pynetdicom."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)
from typer.testing import CliRunner

from pacs.cli import app
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from testkit.dicom_factory import write_ct_series
from testkit.orthanc import running_orthanc
from tests.conftest import RunningArchive, free_port, require_tool
from tests.dimse_tools import archive_view, dataset_part, part10_bytes, storescu
from tests.storescp import running_storescp


@dataclass
class Stored:
    """A study stored over C-STORE: UIDs and the stored bytes of each instance."""

    study_uid: str
    series_uids: list[str]
    stored: dict[str, bytes]  # SOPInstanceUID -> stored Part-10 bytes
    members: list[set[str]]  # SOPInstanceUIDs of each series


def store_study(archive: RunningArchive, folder: Path) -> Stored:
    """Two CT series (3 + 2 slices) of one study, sent with storescu."""
    require_tool("storescu")
    first = write_ct_series(folder / "a", 3, size=16)
    study_uid = str(dcmread(first[0]).StudyInstanceUID)
    second = write_ct_series(folder / "b", 2, size=16, study_uid=study_uid)
    result = storescu(archive.dicom_port, [*first, *second])
    assert len(result.succeeded) == 5, result
    series = [str(dcmread(p[0]).SeriesInstanceUID) for p in (first, second)]
    members = [{str(dcmread(f).SOPInstanceUID) for f in p} for p in (first, second)]
    with archive_view(archive.backend.settings) as view:
        stored = {uid: view.read(uid) for uid in view.instances()}
    assert len(stored) == 5
    return Stored(study_uid, series, stored, members)


def register(archive: RunningArchive, title: str, port: int) -> None:
    result = CliRunner().invoke(
        app, ["ae", "add", title, "127.0.0.1", str(port)], env=archive.backend.env
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port: (port, folder of received files)."""
    port = free_port()
    with running_storescp(require_tool("storescp"), tmp_path / "storescp", port) as out:
        yield port, out


def received(folder: Path) -> dict[str, bytes]:
    """SOPInstanceUID -> received file bytes."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes() for p in files}


def movescu(
    archive: RunningArchive, destination: str, *keys: str
) -> subprocess.CompletedProcess[str]:
    binary = require_tool("movescu")
    args = [binary, "-v", "-S", "-aet", "MOVESCU", "-aec", "PACS", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(archive.dicom_port)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def assert_identical(got: dict[str, bytes], stored: dict[str, bytes], uids: set[str]) -> None:
    assert set(got) == uids
    for uid in uids:
        assert dataset_part(got[uid]) == dataset_part(stored[uid]), uid


def test_move_study_to_storescp(
    archive: RunningArchive, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    port, out = storescp
    study = store_study(archive, tmp_path / "in")
    register(archive, "STORESCP", port)
    run = movescu(
        archive, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}"
    )
    assert run.returncode == 0, run.stdout + run.stderr + archive.log()
    assert "Final Move Response (Success)" in run.stderr
    assert_identical(received(out), study.stored, set(study.stored))


def test_move_series_and_image_levels(
    archive: RunningArchive, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    port, out = storescp
    study = store_study(archive, tmp_path / "in")
    register(archive, "STORESCP", port)
    run = movescu(
        archive,
        "STORESCP",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study.study_uid}",
        f"SeriesInstanceUID={study.series_uids[1]}",
    )
    assert run.returncode == 0, run.stdout + run.stderr + archive.log()
    got = received(out)
    assert_identical(got, study.stored, study.members[1])

    image = sorted(study.members[0])[0]
    run = movescu(
        archive,
        "STORESCP",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study.study_uid}",
        f"SOPInstanceUID={image}",
    )
    assert run.returncode == 0, run.stdout + run.stderr + archive.log()
    assert set(received(out)) == {*got, image}


def test_move_to_unknown_destination_fails(archive: RunningArchive, tmp_path: Path) -> None:
    study = store_study(archive, tmp_path / "in")
    run = movescu(
        archive, "NOBODY", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}"
    )
    output = run.stdout + run.stderr
    assert "MoveDestinationUnknown" in output, output


def test_move_study_to_orthanc(archive: RunningArchive, tmp_path: Path) -> None:
    binary = require_tool("Orthanc")
    study = store_study(archive, tmp_path / "in")
    dicom_port, http_port = free_port(), free_port()
    with running_orthanc(binary, tmp_path / "orthanc", dicom_port, http_port) as base:
        register(archive, "ORTHANC", dicom_port)
        run = movescu(
            archive, "ORTHANC", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}"
        )
        assert run.returncode == 0, run.stdout + run.stderr + archive.log()
        assert httpx.get(f"{base}/statistics").json()["CountInstances"] == 5


def test_get_study_on_the_same_association(archive: RunningArchive, tmp_path: Path) -> None:
    binary = require_tool("getscu")
    study = store_study(archive, tmp_path / "in")
    out = tmp_path / "got"
    out.mkdir()
    args = [binary, "-v", "-S", "-aet", "GETSCU", "-aec", "PACS", "-od", str(out)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}"]
    args += ["127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr + archive.log()
    assert "Completed Suboperations : 5" in run.stderr, run.stderr + archive.log()
    assert_identical(received(out), study.stored, set(study.stored))


def test_move_cancelled_by_pynetdicom(archive: RunningArchive, tmp_path: Path) -> None:
    """A C-CANCEL after the first pending response stops the move with 0xFE00."""
    study = store_study(archive, tmp_path / "in")
    arrived = threading.Event()

    def on_store(event: evt.Event) -> int:
        arrived.set()
        return 0x0000

    dest = AE(ae_title="SLOWDEST")
    dest.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = dest.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    register(archive, "SLOWDEST", port)
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    try:
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study.study_uid
        statuses = []
        for status, _ in assoc.send_c_move(
            identifier, "SLOWDEST", StudyRootQueryRetrieveInformationModelMove, msg_id=7
        ):
            statuses.append(int(status.Status))
            if int(status.Status) == 0xFF00 and len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelMove)
        assert statuses[-1] == 0xFE00, [hex(s) for s in statuses]
        assert statuses.count(0xFF00) < 5
    finally:
        if assoc.is_established:
            assoc.release()
        server.shutdown()
    assert arrived.is_set()


def store_rle(archive: RunningArchive, folder: Path) -> Dataset:
    """One RLE Lossless CT slice, stored as it came (ingested directly)."""
    path = write_ct_series(folder, 1, size=16)[0]
    ds = dcmread(path)
    ds.compress(RLELossless)
    outcome = build_ingest(archive.backend.settings).store_part10(
        part10_bytes(ds), Source(channel="import")
    )
    assert outcome.status is StoreStatus.STORED, outcome.reason
    with archive_view(archive.backend.settings) as view:
        assert [row.transfer_syntax_uid for row in view.instances().values()] == [RLELossless]
    return ds


def assert_decoded(path: Path, original: Dataset) -> None:
    got = dcmread(path)
    assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_get_transcodes_what_the_peer_does_not_accept(
    archive: RunningArchive, tmp_path: Path
) -> None:
    """getscu accepts only native syntaxes: the RLE object is decoded on the way."""
    binary = require_tool("getscu")
    ds = store_rle(archive, tmp_path / "rle")
    out = tmp_path / "got"
    out.mkdir()
    args = [binary, "-v", "-S", "-aet", "GETSCU", "-aec", "PACS", "-od", str(out)]
    args += ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}"]
    args += ["-k", f"SOPInstanceUID={ds.SOPInstanceUID}", "127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert "Completed Suboperations : 1" in run.stderr, run.stderr + archive.log()
    (path,) = out.iterdir()
    assert_decoded(path, ds)


def test_move_transcodes_what_the_destination_does_not_accept(
    archive: RunningArchive, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    """storescp accepts only native syntaxes: the RLE object is decoded on the way."""
    port, out = storescp
    ds = store_rle(archive, tmp_path / "rle")
    register(archive, "STORESCP", port)
    run = movescu(
        archive, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ds.StudyInstanceUID}"
    )
    assert "Final Move Response (Success)" in run.stderr, run.stderr + archive.log()
    (path,) = out.iterdir()
    assert_decoded(path, ds)
