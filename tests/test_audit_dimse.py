"""DIMSE services write audit records, on both deployments, driven by DCMTK peers: one
C-STORE record per study per association (instances counted), C-FIND (Query/Retrieve and
worklist) and C-GET one each, naming the calling AE, its organisation from the allow-list,
its address, the patient and study and the status; the chain stays intact."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import create_engine, select

from pacs.audit import verify
from pacs.audit.tables import AuditEvent
from testkit.dicom_factory import write_ct_series
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.dimse_tools import storescu

PEERS = ("STORESCU", "FINDSCU", "GETSCU")


@pytest.fixture
def archive(backend: Backend, tmp_path: Path) -> Iterator[RunningArchive]:
    """An archive admitting the DCMTK peers as AEs of organisation 'OrgA'."""
    allowed = ",".join(f"{title}@127.0.0.1=OrgA" for title in PEERS)
    running = start_archive(
        backend, tmp_path / "serve.log", PACS_ALLOWED_AES=allowed, PACS_ACCEPT_ANY_AE="false"
    )
    try:
        yield running
    finally:
        stop_archive(running)


def dcmtk(archive: RunningArchive, *args: str) -> str:
    run = subprocess.run(
        [*args, "127.0.0.1", str(archive.dicom_port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr + archive.log()
    return run.stderr


def dimse_rows(archive: RunningArchive, expected: int) -> list[Any]:
    """The DIMSE audit rows, once ``expected`` are there (records follow the response); the
    chain verified."""
    engine = create_engine(archive.backend.settings.resolved_database_url)
    query = select(AuditEvent.__table__).where(AuditEvent.protocol == "dimse")
    try:
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as conn:
                rows = list(conn.execute(query.order_by(AuditEvent.pk)).all())
                if len(rows) >= expected or time.monotonic() > deadline:
                    assert verify(conn).ok
                    return rows
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_store_find_worklist_get_are_audited(archive: RunningArchive, tmp_path: Path) -> None:
    for tool in ("storescu", "findscu", "getscu"):
        require_tool(tool)
    first = write_ct_series(tmp_path / "a", 3, size=16, patient_id="AUDIT-7")
    study = str(dcmread(first[0]).StudyInstanceUID)
    second = write_ct_series(tmp_path / "b", 2, size=16, study_uid=study, patient_id="AUDIT-7")
    other = write_ct_series(tmp_path / "c", 1, size=16, patient_id="AUDIT-8")
    result = storescu(archive.dicom_port, [*first, *second, *other])
    assert len(result.succeeded) == 6, result

    stores = dimse_rows(archive, 2)
    assert sorted(
        (r.resource, r.action, r.patient_identifier, r.query, r.outcome) for r in stores
    ) == [
        ("C-STORE", "create", "AUDIT-7", "instances=5", 0),
        ("C-STORE", "create", "AUDIT-8", "instances=1", 0),
    ]
    assert {r.study_instance_uid for r in stores} >= {study}
    for row in stores:
        assert (row.user_name, row.subject_kind, row.organisation) == ("STORESCU", "ae", "OrgA")
        assert row.client_address == "127.0.0.1" and row.outcome_code == "0"

    out = tmp_path / "find"
    out.mkdir()
    dcmtk(
        archive, "findscu", "-S", "-aet", "FINDSCU", "-aec", "PACS", "-X", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=AUDIT-7",
        "-k", "PatientName=", "-k", "StudyInstanceUID=",
    )  # fmt: skip
    dcmtk(
        archive, "findscu", "-W", "-aet", "FINDSCU", "-aec", "PACS",
        "-k", "PatientID=AUDIT-7", "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
    )  # fmt: skip
    got = tmp_path / "got"
    got.mkdir()
    stderr = dcmtk(
        archive, "getscu", "-v", "-S", "-aet", "GETSCU", "-aec", "PACS", "-od", str(got),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
    )  # fmt: skip
    assert "Completed Suboperations : 5" in stderr, stderr

    rows = dimse_rows(archive, 5)[2:]
    summary = [
        (r.resource, r.action, r.user_name, r.patient_identifier, r.query, r.outcome) for r in rows
    ]
    assert summary == [
        ("C-FIND", "query", "FINDSCU", "AUDIT-7", "level=STUDY responses=1", 0),
        ("MWL C-FIND", "query", "FINDSCU", "AUDIT-7", "responses=0", 0),
        ("C-GET", "read", "GETSCU", "AUDIT-7", "level=STUDY responses=5", 0),
    ]
    assert rows[2].study_instance_uid == study
    assert all(r.organisation == "OrgA" for r in rows)
    assert "PHANTOM" not in str([tuple(r) for r in rows])  # no patient name is recorded


def test_store_on_a_mixed_association_is_audited_when_it_closes(
    archive: RunningArchive, tmp_path: Path
) -> None:
    """An association proposing C-FIND too goes to pynetdicom, not the lean acceptor: its
    C-STOREs are recorded per study when the connection closes."""
    paths = write_ct_series(tmp_path / "m", 2, size=16, patient_id="AUDIT-9")
    study = str(dcmread(paths[0]).StudyInstanceUID)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()
    assert statuses == [0, 0]
    [row] = dimse_rows(archive, 1)
    assert (row.resource, row.user_name, row.organisation, row.patient_identifier) == (
        "C-STORE",
        "STORESCU",
        "OrgA",
        "AUDIT-9",
    )
    assert (row.study_instance_uid, row.query, row.outcome) == (study, "instances=2", 0)
