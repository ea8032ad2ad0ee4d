"""Many senders at once, one study from several senders, a long association, the AE policy."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from testkit import processes
from testkit.dicom_factory import write_ct_series
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.dimse_tools import (
    SUCCESS,
    DicomProxy,
    archive_view,
    dataset_part,
    echoscu,
    parse_storescu,
    status_of,
    storescu,
)

# load-heavy and timing-sensitive tests share one xdist worker: no two of them run at once
pytestmark = pytest.mark.xdist_group("one-at-a-time")

A_ASSOCIATE_RJ = 0x03
SENDERS = 8
SLICES = 20


def _storescu_process(port: int, files: list[Path], aet: str = "STORESCU") -> subprocess.Popen[str]:
    args = ["storescu", "-v", "-nh", "-aet", aet, "-aec", "PACS", "127.0.0.1", str(port)]
    return processes.spawn(
        [*args, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _run_all(port: int, batches: list[list[Path]]) -> None:
    """Run one storescu per batch, all at once; every file must be acknowledged with success."""
    senders = [_storescu_process(port, b, aet=f"SENDER{i}") for i, b in enumerate(batches)]
    try:
        for batch, process in zip(batches, senders, strict=True):
            output, _ = process.communicate(timeout=180)
            result = parse_storescu(process.returncode, output)
            failed = {p.name: s for p, s in result.statuses.items() if s != "Success"}
            assert not failed, f"not stored: {failed}"
            assert result.succeeded == set(batch), output[-2000:]
            assert result.returncode == 0, output[-2000:]
    finally:
        for process in senders:
            processes.stop(process)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def archive(backend: Backend, tmp_path: Path) -> Iterator[RunningArchive]:
    """A running archive with two DICOM processes: concurrency across processes is the point."""
    running = start_archive(backend, tmp_path / "serve.log", PACS_SCP_PROCESSES="2")
    try:
        yield running
    finally:
        stop_archive(running)


def test_eight_storescu_at_once(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    batches = [
        write_ct_series(tmp_path / f"study{i}", SLICES, size=128, patient_id=f"PAT-{i}")
        for i in range(SENDERS)
    ]
    started = time.monotonic()
    _run_all(archive.dicom_port, batches)
    print(f"{SENDERS * SLICES} slices from {SENDERS} senders in {time.monotonic() - started:.1f} s")

    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        assert len(rows) == SENDERS * SLICES
        studies = view.studies()
        assert len(studies) == SENDERS
        for study in studies.values():
            assert study.number_of_study_related_instances == SLICES
            assert study.number_of_study_related_series == 1
        for series in view.series().values():
            assert series.number_of_series_related_instances == SLICES
        for batch in batches:
            path = batch[SLICES // 2]
            assert dataset_part(view.read(_uid(path))) == dataset_part(path.read_bytes())


def test_four_senders_of_one_study_converge(archive: RunningArchive, tmp_path: Path) -> None:
    """Each sender: its quarter of a shared series, a series of its own, and the same overlap."""
    require_tool("storescu")
    study = generate_uid()
    shared = write_ct_series(tmp_path / "shared", 40, size=64, study_uid=study)
    overlap = write_ct_series(tmp_path / "overlap", 5, size=64, study_uid=study)
    own = [write_ct_series(tmp_path / f"own{i}", 5, size=64, study_uid=study) for i in range(4)]
    batches = []
    for i in range(4):
        mixed = [f for pair in zip_longest(shared[i::4], own[i]) for f in pair if f is not None]
        batches.append(overlap + mixed)  # everyone starts with the same five objects
    _run_all(archive.dicom_port, batches)

    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        assert len(rows) == 40 + 5 + 4 * 5
        [study_row] = view.studies().values()
        assert study_row.study_instance_uid == study
        assert study_row.number_of_study_related_instances == len(rows)
        assert study_row.number_of_study_related_series == 6
        assert study_row.size_bytes == sum(row.size_bytes for row in rows.values())
        assert study_row.modalities_in_study == "CT"
        counts = {
            s.series_instance_uid: s.number_of_series_related_instances
            for s in view.series().values()
        }
        series_of = {
            folder: pydicom.dcmread(files[0]).SeriesInstanceUID
            for folder, files in [("shared", shared), ("overlap", overlap)]
        }
        assert counts.pop(series_of["shared"]) == 40
        assert counts.pop(series_of["overlap"]) == 5
        assert sorted(counts.values()) == [5, 5, 5, 5]


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
def test_long_running_association(archive: RunningArchive, tmp_path: Path) -> None:
    """One association with pauses: every success is visible in the index at once."""
    files = write_ct_series(tmp_path / "ct", 4, size=64)
    ae = AE(ae_title="SLOWSENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        for i, path in enumerate(files):
            assert status_of(assoc.send_c_store(pydicom.dcmread(path))) == (SUCCESS, "")
            with archive_view(archive.backend.settings) as view:
                assert len(view.instances()) == i + 1  # durable and indexed before release
            time.sleep(1.0)
            assert int(assoc.send_c_echo().Status) == SUCCESS
        assert assoc.is_established
    finally:
        assoc.release()
    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        assert {row.source_ae_title for row in rows.values()} == {"SLOWSENDER"}


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
def test_calling_ae_policy(backend: Backend, tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("echoscu")
    running = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_ACCEPT_ANY_AE="false",
        PACS_ALLOWED_AES="MODALITY1@127.0.0.1=Clinic 5,MODALITY2@10.9.9.9=Elsewhere",
    )
    try:
        port = running.dicom_port
        files = write_ct_series(tmp_path / "ct", 3, size=64)
        allowed = storescu(port, files, aet="MODALITY1")
        assert allowed.succeeded == set(files), allowed.output[-2000:]

        # a title not on the list: A-ASSOCIATE-RJ
        with DicomProxy(port) as proxy:
            intruder = storescu(proxy.port, files, aet="INTRUDER")
        assert not intruder.succeeded
        assert "Association Rejected" in intruder.output, intruder.output[-2000:]
        assert proxy.archive_pdu_types() == [A_ASSOCIATE_RJ]
        assert echoscu(port, aet="INTRUDER").returncode != 0

        # a listed title from another host than its entry's: A-ASSOCIATE-RJ as well
        with DicomProxy(port) as proxy:
            wrong_host = storescu(proxy.port, files, aet="MODALITY2")
        assert not wrong_host.succeeded, wrong_host.output[-2000:]
        assert proxy.archive_pdu_types() == [A_ASSOCIATE_RJ]
        assert not proxy.exchanges
        assert echoscu(port, aet="MODALITY1").returncode == 0

        with archive_view(backend.settings) as view:
            rows = view.assert_consistent()
            assert len(rows) == 3
            assert {r.source_ae_title for r in rows.values()} == {"MODALITY1"}
            assert {r.source_organisation for r in rows.values()} == {"Clinic 5"}
            [series] = view.series().values()
            assert series.source_organisation == "Clinic 5"
            assert series.source_ae_title == "MODALITY1"
    finally:
        stop_archive(running)
