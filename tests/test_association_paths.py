"""Which acceptor serves an association: storage-only proposals take the lean acceptor, any
other proposal goes to pynetdicom; both store through the same ingest and honour the AE policy.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from testkit.dicom_factory import write_ct_series
from tests.conftest import Backend, start_archive, stop_archive
from tests.dimse_tools import archive_view


def _requestor(*abstract_syntaxes: str, title: str = "WORKSTATION") -> AE:
    ae = AE(ae_title=title)
    for syntax in abstract_syntaxes:
        ae.add_requested_context(syntax, ExplicitVRLittleEndian)
    return ae


def test_mixed_proposal_is_served_by_pynetdicom(backend: Backend, tmp_path: Path) -> None:
    running = start_archive(backend, tmp_path / "serve.log")
    try:
        [path] = write_ct_series(tmp_path / "ct", slices=1, size=64)
        ae = _requestor(CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert assoc.is_established
        results = {str(cx.abstract_syntax): cx.result for cx in assoc.accepted_contexts}
        assert str(CTImageStorage) in results
        status = assoc.send_c_store(pydicom.dcmread(path))
        assoc.release()
        assert status.Status == 0x0000
        with archive_view(backend.settings) as view:
            assert set(view.assert_consistent()) == {pydicom.dcmread(path).SOPInstanceUID}
    finally:
        stop_archive(running)


def test_policy_applies_on_both_paths(backend: Backend, tmp_path: Path) -> None:
    running = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_ACCEPT_ANY_AE="false",
        PACS_ALLOWED_AES="ELSEWHERE@10.9.9.9",
    )
    try:
        storage_only = _requestor(CTImageStorage, title="ELSEWHERE")
        assoc = storage_only.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert assoc.is_rejected  # the lean acceptor answers A-ASSOCIATE-RJ
        mixed = _requestor(
            CTImageStorage, StudyRootQueryRetrieveInformationModelFind, title="ELSEWHERE"
        )
        mixed.add_requested_context(Verification)
        assoc = mixed.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        # pynetdicom knows the title (it is listed) and aborts once it sees the wrong host
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
        with archive_view(backend.settings) as view:
            assert view.assert_consistent() == {}
    finally:
        stop_archive(running)


def test_association_limit_rejects_transiently(backend: Backend, tmp_path: Path) -> None:
    running = start_archive(
        backend, tmp_path / "serve.log", PACS_SCP_PROCESSES="1", PACS_MAX_ASSOCIATIONS="1"
    )
    try:
        ae = _requestor(CTImageStorage)
        first = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert first.is_established
        second = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert second.is_rejected
        first.release()
        deadline = time.monotonic() + 10  # the slot frees once the worker has closed `first`
        third = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        while third.is_rejected and time.monotonic() < deadline:
            time.sleep(0.1)
            third = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert third.is_established
        third.release()
    finally:
        stop_archive(running)
