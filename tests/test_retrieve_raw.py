"""C-MOVE / C-GET send the stored data set bytes untouched; failures are listed; a bad
identifier is refused before the destination is contacted."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from testkit import processes
from testkit.dicom_factory import ct_slice
from testkit.orthanc import wait_for_port
from tests.conftest import RunningArchive, free_port, require_tool
from tests.dimse_tools import dataset_part, part10_bytes
from tests.test_retrieve_scp import register
from tests.wado_data import j2k_ct, module_archive

# one xdist worker for the whole module: its module-scoped archive starts once
pytestmark = pytest.mark.xdist_group("test_retrieve_raw")


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql-s3"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningArchive]:
    """One archive per backend for this module (the tests use distinct studies and AEs)."""
    yield from module_archive(request, tmp_path_factory)


def store(archive: RunningArchive, datasets: list[Dataset]) -> dict[str, bytes]:
    """Ingest ``datasets`` as they are; SOPInstanceUID -> stored bytes."""
    service = build_ingest(archive.backend.settings)
    stored = {}
    for ds in datasets:
        data = part10_bytes(ds)
        outcome = service.store_part10(data, Source(channel="import"))
        assert outcome.status is StoreStatus.STORED, outcome.reason
        stored[str(ds.SOPInstanceUID)] = data
    return stored


def study_identifier(study_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


@contextlib.contextmanager
def storescp_all_syntaxes(folder: Path, port: int) -> Iterator[Path]:
    """DCMTK storescp accepting every transfer syntax (+xa), writing bit-preserving (+B)."""
    binary = require_tool("storescp")
    folder.mkdir(parents=True)
    with (folder.parent / "storescp-all.log").open("wb") as log:
        process = processes.spawn(
            [binary, "-aet", "ANYSCP", "+xa", "+B", "-od", str(folder), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            wait_for_port(port, process)
            yield folder
        finally:
            processes.stop(process)


def test_move_sends_compressed_and_native_bytes_untouched(
    archive: RunningArchive, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    datasets = [*j2k_ct(study_uid, 2), ct_slice(study_uid, generate_uid(), 0, 32)]
    stored = store(archive, datasets)
    port = free_port()
    with storescp_all_syntaxes(tmp_path / "got", port) as out:
        register(archive, "ANYSCP", port)
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
        assert assoc.is_established
        try:
            responses = list(
                assoc.send_c_move(
                    study_identifier(study_uid),
                    "ANYSCP",
                    StudyRootQueryRetrieveInformationModelMove,
                )
            )
        finally:
            assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000, archive.log()
    assert final.NumberOfCompletedSuboperations == 3
    received = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes()
        for p in out.iterdir()
    }
    assert set(received) == set(stored)
    for uid, data in stored.items():
        assert dataset_part(received[uid]) == dataset_part(data), uid
    syntaxes = {
        dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in out.iterdir()
    }
    assert JPEG2000Lossless in syntaxes


def test_get_lists_what_the_peer_cannot_take(archive: RunningArchive) -> None:
    """The peer takes CT only as JPEG 2000 lossless: compressed slices arrive byte-exact, the
    native one fails and is named in FailedSOPInstanceUIDList."""
    study_uid = generate_uid()
    native = ct_slice(study_uid, generate_uid(), 0, 32)
    stored = store(archive, [*j2k_ct(study_uid, 2), native])
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [JPEG2000Lossless])
    assoc = ae.associate(
        "127.0.0.1",
        archive.dicom_port,
        ae_title="PACS",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_get(study_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet)
        )
    finally:
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xB000, hex(final.Status)
    assert final.NumberOfCompletedSuboperations == 2 and final.NumberOfFailedSuboperations == 1
    failed = identifier.FailedSOPInstanceUIDList
    assert [str(failed)] == [str(native.SOPInstanceUID)] or list(failed) == [native.SOPInstanceUID]
    assert set(received) == set(stored) - {str(native.SOPInstanceUID)}
    for uid, data in received.items():
        assert data == dataset_part(stored[uid]), uid


def test_bad_move_identifier_is_refused_before_the_destination(archive: RunningArchive) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    connections: list[object] = []
    stop_event = threading.Event()

    def accept() -> None:
        while not stop_event.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connections.append(listener.accept())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    register(archive, "WATCHED", listener.getsockname()[1])
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"  # no SeriesInstanceUID: not a unique key
        identifier.StudyInstanceUID = "1.2.3"
        responses = list(
            assoc.send_c_move(identifier, "WATCHED", StudyRootQueryRetrieveInformationModelMove)
        )
        assert [int(s.Status) for s, _ in responses] == [0xA900]
        assert assoc.is_established  # the association goes on
    finally:
        assoc.release()
        stop_event.set()
        thread.join()
        listener.close()
    assert connections == []
