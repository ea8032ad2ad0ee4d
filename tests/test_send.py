"""``pacs send``: C-STORE SCU to DCMTK storescp, to Orthanc and to a peer that refuses some."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from typer.testing import CliRunner

from pacs.cli import app
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from testkit.dicom_factory import as_phantom_patient, ct_slice
from testkit.orthanc import running_orthanc
from tests.conftest import Backend, free_port, require_tool
from tests.dimse_tools import archive_view, dataset_part, part10_bytes
from tests.storescp import running_storescp

SOURCE = Source(channel="import")


@dataclass
class StoredStudy:
    """A study in the archive: its UIDs and the stored bytes of each instance."""

    study_uid: str
    series_uids: list[str]
    stored: dict[str, bytes]  # SOPInstanceUID -> stored Part-10 bytes
    rle_uid: str
    implicit_uid: str


def ingest_study(backend: Backend) -> StoredStudy:
    """Three explicit VR slices, one implicit VR slice (series 1) and one RLE slice (series 2)."""
    ingest = build_ingest(backend.settings)
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    datasets = [ct_slice(study, series[0], i, size=16) for i in range(4)]
    datasets[3].file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    rle = ct_slice(study, series[1], 0, size=16)
    rle.SeriesNumber = 2
    rle.compress(RLELossless)
    datasets.append(rle)
    for ds in datasets:
        outcome = ingest.store_part10(part10_bytes(ds), SOURCE)
        assert outcome.status is StoreStatus.STORED, outcome.reason
    with archive_view(backend.settings) as view:
        stored = {uid: view.read(uid) for uid in view.instances()}
    assert len(stored) == 5
    return StoredStudy(
        study, series, stored, str(rle.SOPInstanceUID), str(datasets[3].SOPInstanceUID)
    )


def cli(backend: Backend, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={**backend.env, "COLUMNS": "200"})
    return result.exit_code, result.output


def summary(output: str) -> dict[str, int]:
    """The counts of the summary table."""
    counts = {}
    for line in output.splitlines():
        words = line.replace("│", " ").replace("|", " ").split()
        if len(words) == 2 and words[0] in ("sent", "warning", "failed", "(transcoded)"):
            counts[words[0]] = int(words[1])
    return counts


# ---------------------------------------------------------------- DCMTK storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port: (port, folder of received files)."""
    port = free_port()
    with running_storescp(require_tool("storescp"), tmp_path / "storescp", port) as out:
        yield port, out


def received(folder: Path) -> dict[str, Path]:
    """SOPInstanceUID -> received file."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def test_send_study_to_storescp(backend: Backend, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    study = ingest_study(backend)
    assert cli(backend, "ae", "add", "STORESCP", "127.0.0.1", str(port))[0] == 0

    code, output = cli(backend, "send", study.study_uid, "STORESCP")
    assert code == 0, output
    assert summary(output) == {"sent": 5, "warning": 0, "failed": 0, "(transcoded)": 1}, output

    files = received(out)
    assert set(files) == set(study.stored)
    for uid, data in study.stored.items():
        got = files[uid].read_bytes()
        if uid == study.rle_uid:  # storescp takes no RLE: decoded, sent explicit VR
            sent = dcmread(files[uid])
            assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            original = dcmread(io.BytesIO(data))
            assert np.array_equal(sent.pixel_array, original.pixel_array)
        else:  # the data set arrives byte for byte as stored
            assert dataset_part(got) == dataset_part(data), uid


def test_send_one_series(db_backend: Backend, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    study = ingest_study(db_backend)
    assert cli(db_backend, "ae", "add", "STORESCP", "127.0.0.1", str(port))[0] == 0
    code, output = cli(
        db_backend, "send", study.study_uid, "STORESCP", "--series", study.series_uids[0]
    )
    assert code == 0, output
    assert summary(output)["sent"] == 4
    assert study.rle_uid not in received(out) and len(received(out)) == 4


def test_send_refuses_unknown_ae_study_and_unreachable_peer(db_backend: Backend) -> None:
    study = ingest_study(db_backend)
    code, output = cli(db_backend, "send", study.study_uid, "NOBODY")
    assert code == 2 and "no remote AE titled 'NOBODY'" in output, output
    assert cli(db_backend, "ae", "add", "DOWN", "127.0.0.1", str(free_port()))[0] == 0
    code, output = cli(db_backend, "send", "1.2.3.4", "DOWN")
    assert code == 2 and "no stored instances" in output, output
    code, output = cli(db_backend, "send", study.study_uid, "DOWN")
    assert code == 2 and "association with DOWN" in output, output


# ---------------------------------------------------------------- a peer that refuses some


def test_warnings_and_failures_are_counted(db_backend: Backend) -> None:
    """A pynetdicom peer: no RLE, no implicit VR; answers a warning for one instance and a
    failure for another; the exit code is 1 and each outcome is named."""
    study = ingest_study(db_backend)
    uids = sorted(set(study.stored) - {study.rle_uid, study.implicit_uid})
    answers = {uids[0]: 0xB000, uids[1]: 0xA700}

    def on_store(event: evt.Event) -> int:
        return answers.get(str(event.request.AffectedSOPInstanceUID), 0x0000)

    peer = AE(ae_title="PICKY")
    peer.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = peer.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        assert cli(db_backend, "ae", "add", "PICKY", "127.0.0.1", str(port))[0] == 0
        code, output = cli(db_backend, "send", study.study_uid, "PICKY")
    finally:
        server.shutdown()
    assert code == 1, output
    # the implicit VR slice and the RLE slice are re-encoded as explicit VR
    assert summary(output) == {"sent": 3, "warning": 1, "failed": 1, "(transcoded)": 2}, output
    assert f"warning {uids[0]}: status 0xB000" in output
    assert f"failed {uids[1]}: status 0xA700" in output


# ---------------------------------------------------------------- Orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """Orthanc from Debian with a temporary configuration: (DICOM port, HTTP base URL)."""
    binary = require_tool("Orthanc")
    dicom_port, http_port = free_port(), free_port()
    with running_orthanc(binary, tmp_path / "orthanc", dicom_port, http_port) as base:
        yield dicom_port, base


def test_send_study_to_orthanc(backend: Backend, orthanc: tuple[int, str]) -> None:
    port, base = orthanc
    study = ingest_study(backend)
    assert cli(backend, "ae", "add", "ORTHANC", "127.0.0.1", str(port))[0] == 0

    code, output = cli(backend, "send", study.study_uid, "ORTHANC")
    assert code == 0, output
    assert summary(output) == {"sent": 5, "warning": 0, "failed": 0, "(transcoded)": 0}, output

    assert httpx.get(f"{base}/statistics").json()["CountInstances"] == 5
    for uid, data in study.stored.items():
        found = httpx.post(f"{base}/tools/lookup", content=uid).json()
        assert [f["Type"] for f in found] == ["Instance"], uid
        orthanc_id = found[0]["ID"]
        syntax = httpx.get(f"{base}/instances/{orthanc_id}/metadata/TransferSyntax").text
        assert syntax == str(dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID)
        tags = httpx.get(f"{base}/instances/{orthanc_id}/simplified-tags").json()
        assert tags["StudyInstanceUID"] == study.study_uid


# ---------------------------------------------------------------- compressed objects


COMPRESSED = [  # pydicom's test files; the last is 12-bit JPEG Extended, which nothing here decodes
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-lossy.dcm",
]


def test_compressed_objects_are_decoded_for_an_uncompressed_peer(
    db_backend: Backend, storescp: tuple[int, Path]
) -> None:
    from pydicom.data import get_testdata_file

    port, out = storescp
    ingest, study = build_ingest(db_backend.settings), generate_uid()
    originals = {}
    for name in COMPRESSED:
        ds = dcmread(str(get_testdata_file(name)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        as_phantom_patient(ds)
        outcome = ingest.store_part10(part10_bytes(ds), SOURCE)
        assert outcome.status is StoreStatus.STORED, outcome.reason
        originals[str(ds.SOPInstanceUID)] = ds
    assert cli(db_backend, "ae", "add", "STORESCP", "127.0.0.1", str(port))[0] == 0

    code, output = cli(db_backend, "send", study, "STORESCP")
    assert code == 1, output
    assert summary(output) == {"sent": 4, "warning": 0, "failed": 1, "(transcoded)": 4}, output
    undecodable = next(uid for uid, ds in originals.items() if ds.BitsStored == 12)
    del originals[undecodable]
    assert f"failed {undecodable}: cannot prepare" in output, output

    files = received(out)
    assert set(files) == set(originals)
    for uid, original in originals.items():
        got = dcmread(files[uid])
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(got.pixel_array, original.pixel_array), uid


# ---------------------------------------------------------------- the SCU as C-MOVE will use it


def test_scu_move_originator_and_cancel(db_backend: Backend) -> None:
    from pacs.dimse.scu import MoveOriginator, Outcome, send
    from pacs.index.engine import create_index_engine, session_factory
    from pacs.index.models import RemoteAE
    from pacs.sender import study_items
    from pacs.storage import open_store

    study = ingest_study(db_backend)
    engine = create_index_engine(db_backend.settings)
    with session_factory(engine)() as session:
        items = study_items(session, open_store(db_backend.settings), study.study_uid)
    engine.dispose()
    seen: list[tuple[str, str, int]] = []

    def on_store(event: evt.Event) -> int:
        request = event.request
        seen.append(
            (
                str(request.AffectedSOPInstanceUID),
                str(request.MoveOriginatorApplicationEntityTitle),
                int(request.MoveOriginatorMessageID),
            )
        )
        return 0x0000

    peer_ae = AE(ae_title="MOVEDEST")
    peer_ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = peer_ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )

    try:
        result = send(
            db_backend.settings,
            RemoteAE(title="MOVEDEST", host="127.0.0.1", port=port),
            items,
            originator=MoveOriginator("MOVESCU", 7),
            cancelled=lambda: len(seen) >= 2,
        )
    finally:
        server.shutdown()
    assert result.cancelled and result.total == 5 and result.remaining == 3
    assert [r.outcome for r in result.results] == [Outcome.SENT, Outcome.SENT]
    assert [(uid, aet, mid) for uid, aet, mid in seen] == [
        (items[0].sop_instance_uid, "MOVESCU", 7),
        (items[1].sop_instance_uid, "MOVESCU", 7),
    ]
