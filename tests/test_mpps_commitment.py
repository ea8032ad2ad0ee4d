"""MPPS SCP and Storage Commitment Push Model SCP against a running archive (SQLite and
PostgreSQL), with pynetdicom as the modality; the worklist seen by DCMTK ``findscu -W``; the
order arriving over MLLP (``PACS_HL7_PORT``)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

from pacs.dimse.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from pacs.dimse.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from pacs.fhir.resources import found
from pacs.fhir.store import FhirStore
from pacs.hl7.mllp import frame, read_frames
from pacs.index.engine import create_index_engine
from pacs.index.models import Instance
from pacs.mpps.service import MppsError, MppsService
from testkit.dicom_factory import ct_slice
from testkit.net import free_port
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.test_worklist_orders import ORM

MWL = "1.2.840.10008.5.1.4.31"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def archive_hl7(db_backend: Backend, tmp_path: Path) -> Iterator[tuple[RunningArchive, int]]:
    hl7_port = free_port()
    running = start_archive(db_backend, tmp_path / "serve.log", PACS_HL7_PORT=str(hl7_port))
    try:
        yield running, hl7_port
    finally:
        stop_archive(running)


def _send_order(port: int, message: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(frame(message))
        answer = read_frames(sock)()
    assert answer is not None
    return answer.decode()


def _findscu(archive: RunningArchive, folder: Path, *keys: str) -> list[Dataset]:
    folder.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-X", "-aet", "CT01", "-aec", "PACS"]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, cwd=folder, capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


def _mpps_create(accession: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Петров^Иван^Сергеевич"
    ds.PatientID = "MRN-9"
    step = Dataset()
    step.AccessionNumber = accession
    step.StudyInstanceUID = study_uid
    step.RequestedProcedureID = "RP-2001"
    step.ScheduledProcedureStepID = "SPS-2001"
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261126"
    ds.PerformedProcedureStepStartTime = "093500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = Sequence()
    return ds


def _status(result: Any) -> int:
    status = result[0] if isinstance(result, tuple) else result
    return int(status.Status)


def _procedure(engine: Any, mpps_uid: str) -> dict[str, Any]:
    bundle = FhirStore(engine).search(
        "Procedure", [("identifier", f"urn:dicom:uid|urn:oid:{mpps_uid}")]
    )
    [procedure] = found(bundle, "Procedure")
    return procedure


@pytest.mark.dcmtk
def test_order_worklist_mpps_and_commitment_end_to_end(
    archive_hl7: tuple[RunningArchive, int], tmp_path: Path
) -> None:
    require_tool("findscu")
    require_tool("storescu")
    archive, hl7_port = archive_hl7
    # 1. HL7 order over MLLP -> AA -> the worklist (findscu -W) with the new attributes
    assert "MSA|AA|MSG-1" in _send_order(hl7_port, ORM)
    [item] = _findscu(
        archive,
        tmp_path / "mwl1",
        "AccessionNumber=ACC-2001",
        "RequestedProcedureID",
        "MedicalAlerts",
        "Allergies",
        "RequestedProcedurePriority",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
        "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeValue",
    )
    assert (item.RequestedProcedureID, item.RequestedProcedurePriority) == ("RP-2001", "STAT")
    assert (item.MedicalAlerts, item.Allergies) == ("Pacemaker", "Iodine")
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepID, step.ScheduledProcedureStepDescription) == (
        "SPS-2001",
        "Chest arterial",
    )
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "P-CHEST-ART"
    study_uid = "1.2.826.0.1.3680043.8.498.2001"  # ZDS-1 of the order
    # the same item for a pynetdicom MWL C-FIND, by the step's station and ID keys
    finder = AE(ae_title="CT01")
    finder.add_requested_context(MWL)
    assoc = finder.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    assert assoc.is_established
    query = Dataset()
    query.StudyInstanceUID = ""
    query.Allergies = ""
    step_keys = Dataset()
    step_keys.ScheduledProcedureStepID = "SPS-2001"
    step_keys.Modality = "CT"
    step_keys.ScheduledProcedureStepStartDate = "20261126"
    query.ScheduledProcedureStepSequence = Sequence([step_keys])
    answers = [i for s, i in assoc.send_c_find(query, MWL) if s and s.Status == 0xFF00]
    assoc.release()
    assert [(a.StudyInstanceUID, a.Allergies) for a in answers] == [(study_uid, "Iodine")]

    # 2. MPPS N-CREATE IN PROGRESS (pynetdicom) -> the step leaves the worklist
    engine = create_index_engine(archive.backend.settings)
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    reports: list[tuple[int, Dataset]] = []
    received = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((event.request.EventTypeID, event.event_information))
        received.set()
        return 0x0000, None

    assoc = ae.associate(
        "127.0.0.1",
        archive.dicom_port,
        ae_title="PACS",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    try:
        mpps_uid = generate_uid()
        created = assoc.send_n_create(
            _mpps_create("ACC-2001", study_uid), MODALITY_PERFORMED_PROCEDURE_STEP, mpps_uid
        )
        assert _status(created) == 0x0000
        assert _findscu(archive, tmp_path / "mwl2", "AccessionNumber=ACC-2001") == []
        assert _procedure(engine, mpps_uid)["status"] == "in-progress"
        # a second N-CREATE of the same instance: duplicate
        again = assoc.send_n_create(
            _mpps_create("ACC-2001", study_uid), MODALITY_PERFORMED_PROCEDURE_STEP, mpps_uid
        )
        assert _status(again) == 0x0111

        # 3. N-SET COMPLETED -> Procedure completed; a later N-SET is refused (0110, A710)
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20261126"
        done.PerformedProcedureStepEndTime = "094500"
        status, _ = assoc.send_n_set(done, MODALITY_PERFORMED_PROCEDURE_STEP, mpps_uid)
        assert status.Status == 0x0000
        procedure = _procedure(engine, mpps_uid)
        assert procedure["status"] == "completed"
        assert procedure["performedPeriod"]["end"].startswith("2026-11-26T09:45:00")
        late = Dataset()
        late.PerformedProcedureStepStatus = "DISCONTINUED"
        status, _ = assoc.send_n_set(late, MODALITY_PERFORMED_PROCEDURE_STEP, mpps_uid)
        assert (status.Status, status.ErrorID) == (0x0110, 0xA710)
        status, _ = assoc.send_n_set(done, MODALITY_PERFORMED_PROCEDURE_STEP, generate_uid())
        assert status.Status == 0x0112

        # 4. Storage commitment on the same association: stored + unknown + damaged
        paths = []
        series_uid = generate_uid()
        for i in range(2):
            ds = ct_slice(study_uid, series_uid, i, 8, accession_number="ACC-2001")
            path = tmp_path / f"{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append((path, ds.SOPInstanceUID))
        run = subprocess.run(
            ["storescu", "-aec", "PACS", "127.0.0.1", str(archive.dicom_port)]
            + [str(p) for p, _ in paths],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        with engine.connect() as conn:
            key = conn.scalar(
                select(Instance.object_key).where(Instance.sop_instance_uid == paths[1][1])
            )
        damaged = Path(archive.backend.settings.resolved_storage_url.removeprefix("file://"))
        target = damaged / str(key)
        target.write_bytes(target.read_bytes()[:-1] + b"\x01")
        missing = generate_uid()
        request = _commitment_request(
            [(CT_IMAGE, paths[0][1]), (CT_IMAGE, paths[1][1]), (CT_IMAGE, missing)]
        )
        status, _ = assoc.send_n_action(
            request, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        assert status.Status == 0x0000
        assert received.wait(30), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    event_type, info = reports[0]
    assert event_type == 2
    assert info.TransactionUID == request.TransactionUID
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [paths[0][1]]
    failures = {f.ReferencedSOPInstanceUID: f.FailureReason for f in info.FailedSOPSequence}
    assert failures == {paths[1][1]: 0x0110, missing: 0x0112}

    # 5. The requestor releases at once: the report comes on a new association to its
    #    registered address, the archive taking the SCP role
    scu_port = free_port()
    _register(archive, "CT01", scu_port)
    listener = AE(ae_title="CT01")
    listener.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
    late_reports: list[tuple[int, Dataset]] = []
    arrived = threading.Event()

    def on_late(event: Any) -> tuple[int, None]:
        late_reports.append((event.request.EventTypeID, event.event_information))
        arrived.set()
        return 0x0000, None

    server = listener.start_server(
        ("127.0.0.1", scu_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_late)]
    )
    try:
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
        assert assoc.is_established
        request = _commitment_request([(CT_IMAGE, paths[0][1])])
        status, _ = assoc.send_n_action(
            request, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        assoc.release()
        assert status.Status == 0x0000
        assert arrived.wait(30), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
        engine.dispose()
    event_type, info = late_reports[0]
    assert (event_type, info.TransactionUID) == (1, request.TransactionUID)
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [paths[0][1]]
    assert "FailedSOPSequence" not in info


def _register(archive: RunningArchive, title: str, port: int) -> None:
    from pacs.aes import AESpec, migrated_session, put_ae

    with migrated_session(archive.backend.settings) as session:
        put_ae(session, AESpec(title, "127.0.0.1", port))


def _commitment_request(references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def _referral(store: FhirStore, accession: str) -> dict[str, Any]:
    patient = store.create(
        {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "P1"}]}
    )
    return store.create(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "identifier": [{"system": "urn:pacs:accession", "value": accession,
                            "type": {"coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN"}]}}],
            "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                 "code": "CT"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }
    )  # fmt: skip


@pytest.mark.parametrize("reason", ["110514", "110500"])
def test_discontinued_step(db_backend: Backend, reason: str) -> None:
    """DISCONTINUED: the Procedure is stopped and the referral on hold; with "Incorrect
    worklist entry selected" the Procedure is entered-in-error and the referral stays active
    (the step is on the worklist again)."""
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    service = MppsService(engine, store)
    try:
        referral = _referral(store, "D-1")
        uid = generate_uid()
        state = service.create(uid, _mpps_create("D-1", generate_uid()), "CT01")
        assert state.service_request_id == referral["id"]
        stop = Dataset()
        stop.PerformedProcedureStepStatus = "DISCONTINUED"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = reason, "DCM"
        code.CodeMeaning = "reason"
        stop.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([code])
        assert service.set(uid, stop).holds_step is False
        procedure = _procedure(engine, uid)
        after = store.read("ServiceRequest", referral["id"])
        if reason == "110514":
            assert (procedure["status"], after["status"]) == ("entered-in-error", "active")
        else:
            assert (procedure["status"], after["status"]) == ("stopped", "on-hold")
        with pytest.raises(MppsError) as refused:
            service.set(uid, stop)
        assert (refused.value.status, refused.value.error_id) == (0x0110, 0xA710)
        bad = Dataset()
        bad.PerformedProcedureStepStatus = "SCHEDULED"
        with pytest.raises(MppsError) as invalid:
            service.create(generate_uid(), bad)
        assert invalid.value.status == 0x0106
        stored = service.attributes(uid)
        assert stored is not None and stored.PerformedProcedureStepStatus == "DISCONTINUED"
        assert stored.PatientName == "Петров^Иван^Сергеевич"
    finally:
        engine.dispose()


def test_unscheduled_step_is_stored_without_a_procedure(db_backend: Backend) -> None:
    engine = create_index_engine(db_backend.settings)
    try:
        service = MppsService(engine)
        state = service.create(generate_uid(), _mpps_create("NO-SUCH", generate_uid()))
        assert (state.service_request_id, state.procedure_id) == ("", "")
    finally:
        engine.dispose()
