"""Worklist fidelity: every attribute a modality uses, from FHIR and back; DCMTK worklist
files and HL7 v2 orders imported (``pacs worklist import``), and the MLLP listener (real
frames over a socket) acknowledging only after the ServiceRequest is stored."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from pacs.cli import app
from pacs.fhir.store import FhirStore
from pacs.hl7.messages import decode
from pacs.hl7.mllp import MLLPListener, frame, read_frames
from pacs.hl7.orders import order_of
from pacs.hl7.receiver import receive
from pacs.index.engine import create_index_engine
from pacs.worklist import item_from_service_request, response
from pacs.worklist.files import item_from_dataset, parse_dump, read_dataset
from pacs.worklist.items import WorklistItem
from pacs.worklist.orders import patient_of, service_request_of
from pacs.worklist.source import WorklistSource
from tests.conftest import Backend, require_tool

DCMTK_EXAMPLE = Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS/wklist1.dump")

DUMP = r"""# a DCMTK worklist item, as dump2dcm reads it
(0008,0005) CS  [ISO_IR 192]
(0008,0050) SH  [ACC-1001]
(0010,0010) PN  [Петров^Иван^Сергеевич]
(0010,0020) LO  [MRN-9]
(0010,0021) LO  [CITY-HOSP]
(0010,0030) DA  [19610412]
(0010,0040) CS  [M]
(0010,2000) LO  [Pacemaker\Diabetes]
(0010,2110) LO  [Iodine]
(0020,000d) UI  [1.2.826.0.1.3680043.8.498.1001]
(0032,1032) PN  [Smith^Ann]
(0032,1060) LO  [CT chest with contrast]
(0032,1064) SQ  (Sequence with explicit length #=1)
(fffe,e000) na  (Item with explicit length #=3)
(0008,0100) SH  [24627-2]
(0008,0102) SH  [LN]
(0008,0104) LO  [CT Chest]
(fffe,e00d) na  (ItemDelimitationItem for re-encoding)
(fffe,e0dd) na  (SequenceDelimitationItem for re-encod.)
(0038,0010) LO  [CASE-77]
(0040,0100) SQ  (Sequence with explicit length #=1)
(fffe,e000) na  (Item with explicit length #=13)
(0008,0060) CS  [CT]
(0032,1070) LO  [Omnipaque 350]
(0040,0001) AE  [CT01\CT02]
(0040,0002) DA  [20261126]
(0040,0003) TM  [093000]
(0040,0006) PN  [Sidorov^Petr]
(0040,0007) LO  [Chest, arterial phase]
(0040,0008) SQ  (Sequence with explicit length #=1)
(fffe,e000) na  (Item with explicit length #=3)
(0008,0100) SH  [P-CHEST-ART]
(0008,0102) SH  [99HOSP]
(0008,0104) LO  [Chest arterial protocol]
(fffe,e00d) na  (ItemDelimitationItem for re-encoding)
(fffe,e0dd) na  (SequenceDelimitationItem for re-encod.)
(0040,0009) SH  [SPS-1001]
(0040,0010) SH  [CT-ROOM-2]
(0040,0011) SH  [Building B]
(0040,0012) LO  [Prednisolone 50 mg]
(0040,0400) LT  [Patient is claustrophobic]
(fffe,e00d) na  (ItemDelimitationItem for re-encoding)
(fffe,e0dd) na  (SequenceDelimitationItem for re-encod.)
(0040,1001) SH  [RP-1001]
(0040,1003) SH  [MEDIUM]
(0040,1400) LT  [Compare with 2025 study]
"""

ORM = (
    "MSH|^~\\&|RIS|CITY|PACS|CITY|20261126080000||ORM^O01|MSG-1|P|2.3.1||||||UNICODE UTF-8\r"
    "PID|1||MRN-9^^^CITY-HOSP^MR||Петров^Иван^Сергеевич||19610412|M\r"
    "PV1|1|O|||||||^Smith^Ann||||||||||CASE-77\r"
    "ORC|NW|PL-1|FL-1||SC||^^^20261126093000^^S\r"
    "OBR|1|PL-1|FL-1|CTCHEST^CT chest^99HOSP^P-CHEST-ART^Chest arterial^99HOSP|||||||||"
    "Pacemaker|||^Smith^Ann||ACC-2001|RP-2001|SPS-2001||||CT\r"
    "ZDS|1.2.826.0.1.3680043.8.498.2001^PACS^Application^DICOM\r"
    "AL1|1|DA|^Iodine\r"
    "NTE|1||Compare with 2025 study\r"
)

OMI = (
    "MSH|^~\\&|RIS|CITY|PACS|CITY|20261126080000||OMI^O23^OMI_O23|MSG-2|P|2.5.1\r"
    "PID|1||MRN-10^^^CITY-HOSP^MR||Doe^John||19800101|F\r"
    "ORC|NW|PL-2|FL-2||SC\r"
    "TQ1|1||||||20261127101500||A\r"
    "OBR|1|PL-2|FL-2|MRHEAD^MR head^99HOSP\r"
    "IPC|ACC-3001|RP-3001|1.2.826.0.1.3680043.8.498.3001|SPS-3001|MR|P-HEAD^Head protocol^99HOSP"
    "~P-DWI^Diffusion^99HOSP|MR-1^^^|^Room 5|MR01\r"
)


def _full_item(**changes: Any) -> WorklistItem:
    base = WorklistItem(
        service_request_id="",
        accession_number="ACC-1",
        requested_procedure_id="RP-1",
        requested_procedure_description="CT chest with contrast",
        requested_procedure_code=("24627-2", "LN", "CT Chest"),
        requested_procedure_priority="LOW",
        study_instance_uid="1.2.3.4.5",
        modality="CT",
        scheduled_station_ae_titles=("CT01", "CT02"),
        start_date="20261126",
        start_time="093000",
        scheduled_performing_physician_name="Sidorov^Petr",
        scheduled_procedure_step_id="SPS-1",
        scheduled_procedure_step_description="Chest, arterial phase",
        referring_physician_name="Smith^Ann",
        requesting_physician="Smith^Ann",
        patient_name="Doe^John",
        patient_id="MRN-1",
        issuer_of_patient_id="CITY-HOSP",
        patient_birth_date="19610412",
        patient_sex="M",
        admission_id="CASE-1",
        scheduled_station_names=("CT-ROOM-2",),
        scheduled_procedure_step_location="Building B",
        scheduled_protocol_codes=(("P-1", "99HOSP", "Chest protocol"),),
        medical_alerts=("Pacemaker", "Diabetes"),
        allergies=("Iodine",),
        requested_contrast_agent="Omnipaque 350",
        pre_medication="Prednisolone",
        requested_procedure_comments="Compare with 2025 study",
        comments_on_the_scheduled_procedure_step="Claustrophobic",
    )
    return dataclasses.replace(base, **changes)


def _through_fhir(item: WorklistItem) -> WorklistItem | None:
    """``item`` -> (Patient, ServiceRequest) -> worklist item."""
    patient = {**patient_of(item), "id": "p1"}
    request = {**service_request_of(item, "p1"), "id": "sr1"}
    for resource in (patient, request):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    stored = {("Patient", "p1"): patient}
    return item_from_service_request(request, lambda k, i: stored.get((k, i)), lambda _: [])


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"requested_procedure_priority": "STAT", "scheduled_procedure_step_id": "ACC-1"},
        {"requested_procedure_priority": "HIGH", "requested_procedure_id": "ACC-1"},
        {"scheduled_procedure_step_description": "CT chest with contrast"},
    ],
)
def test_every_attribute_survives_the_fhir_mapping(changes: dict[str, Any]) -> None:
    """WorklistItem -> ServiceRequest (validated R4B) -> WorklistItem is the identity."""
    item = _full_item(**changes)
    back = _through_fhir(item)
    assert back is not None
    assert dataclasses.replace(back, service_request_id="") == item


def test_priorities_map_both_ways() -> None:
    request = service_request_of(_full_item(requested_procedure_priority="HIGH"), "p1")
    assert request["priority"] == "asap" and "extension" not in str(request["priority"])
    low = service_request_of(_full_item(requested_procedure_priority="LOW"), "p1")
    assert low["priority"] == "routine"
    assert {"url": "urn:pacs:worklist:RequestedProcedurePriority", "valueString": "LOW"} in low[
        "extension"
    ]


def test_response_carries_every_requested_attribute() -> None:
    item = _full_item()
    identifier = Dataset()
    for keyword in (
        "AccessionNumber",
        "RequestedProcedureID",
        "MedicalAlerts",
        "Allergies",
        "RequestedProcedureComments",
        "RequestedProcedurePriority",
    ):
        setattr(identifier, keyword, None)
    identifier.ScheduledProcedureStepSequence = Sequence()  # every step attribute
    out = response(identifier, item)
    assert (out.AccessionNumber, out.RequestedProcedureID) == ("ACC-1", "RP-1")
    assert list(out.MedicalAlerts) == ["Pacemaker", "Diabetes"]
    assert (out.Allergies, out.RequestedProcedurePriority) == ("Iodine", "LOW")
    step = out.ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepID == "SPS-1"
    assert step.ScheduledProcedureStepDescription == "Chest, arterial phase"
    assert (step.ScheduledStationName, step.ScheduledProcedureStepLocation) == (
        "CT-ROOM-2",
        "Building B",
    )
    assert (step.RequestedContrastAgent, step.PreMedication) == ("Omnipaque 350", "Prednisolone")
    assert step.CommentsOnTheScheduledProcedureStep == "Claustrophobic"
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "P-1"


def test_dcmdump_item_and_its_dump2dcm_file_read_alike(tmp_path: Path) -> None:
    dump = tmp_path / "item.dump"
    dump.write_text(DUMP, encoding="utf-8")
    item = item_from_dataset(parse_dump(DUMP))
    assert item == _full_item(
        accession_number="ACC-1001",
        requested_procedure_id="RP-1001",
        scheduled_procedure_step_id="SPS-1001",
        requested_procedure_priority="MEDIUM",
        study_instance_uid="1.2.826.0.1.3680043.8.498.1001",
        patient_name="Петров^Иван^Сергеевич",
        patient_id="MRN-9",
        admission_id="CASE-77",
        referring_physician_name="",
        scheduled_protocol_codes=(("P-CHEST-ART", "99HOSP", "Chest arterial protocol"),),
        pre_medication="Prednisolone 50 mg",
        comments_on_the_scheduled_procedure_step="Patient is claustrophobic",
    )
    require_tool("dump2dcm")
    wl = tmp_path / "item.wl"
    subprocess.run(["dump2dcm", "+te", str(dump), str(wl)], check=True, capture_output=True)
    assert item_from_dataset(read_dataset(wl)) == item


def test_dcmtk_example_worklist_reads() -> None:
    if not DCMTK_EXAMPLE.exists():
        pytest.skip("DCMTK example worklist not installed")
    item = item_from_dataset(read_dataset(DCMTK_EXAMPLE))
    assert (item.accession_number, item.modality, item.patient_id) == ("00000", "MR", "AV35674")
    assert item.scheduled_station_ae_titles == ("AA32", "AA33")
    assert (item.requested_procedure_id, item.scheduled_procedure_step_id) == (
        "RP454G234",
        "SPD3445",
    )
    assert (item.scheduled_station_names, item.requested_procedure_priority) == (("STN456",), "LOW")


def test_hl7_orders_map_to_items() -> None:
    orm = order_of(decode(ORM.encode()).message)
    assert orm.status == "active"
    item = orm.item
    assert (
        item.accession_number,
        item.requested_procedure_id,
        item.scheduled_procedure_step_id,
    ) == (
        "ACC-2001",
        "RP-2001",
        "SPS-2001",
    )
    assert (item.patient_id, item.issuer_of_patient_id, item.patient_name) == (
        "MRN-9",
        "CITY-HOSP",
        "Петров^Иван^Сергеевич",
    )
    assert (item.modality, item.start_date, item.start_time) == ("CT", "20261126", "093000")
    assert item.requested_procedure_priority == "STAT"
    assert item.requested_procedure_code == ("CTCHEST", "99HOSP", "CT chest")
    assert item.scheduled_protocol_codes == (("P-CHEST-ART", "99HOSP", "Chest arterial"),)
    assert item.scheduled_procedure_step_description == "Chest arterial"
    assert (item.medical_alerts, item.allergies) == (("Pacemaker",), ("Iodine",))
    assert item.study_instance_uid == "1.2.826.0.1.3680043.8.498.2001"
    assert (item.referring_physician_name, item.admission_id) == ("Smith^Ann", "CASE-77")
    assert item.requested_procedure_comments == "Compare with 2025 study"
    omi = order_of(decode(OMI.encode()).message).item
    assert (omi.accession_number, omi.modality, omi.requested_procedure_priority) == (
        "ACC-3001",
        "MR",
        "HIGH",
    )
    assert [c[0] for c in omi.scheduled_protocol_codes] == ["P-HEAD", "P-DWI"]
    assert (omi.scheduled_station_names, omi.scheduled_station_ae_titles) == (("MR-1",), ("MR01",))
    assert omi.scheduled_procedure_step_location == "Room 5"
    assert (omi.start_date, omi.start_time) == ("20261127", "101500")
    cancel = ORM.replace("ORC|NW|", "ORC|CA|")
    assert order_of(decode(cancel.encode()).message).status == "revoked"


def _mwl(store: FhirStore, engine: Any, accession: str, **options: Any) -> list[Dataset]:
    identifier = Dataset()
    identifier.AccessionNumber = accession
    for keyword in ("RequestedProcedureID", "MedicalAlerts", "Allergies", "PatientName"):
        setattr(identifier, keyword, None)
    identifier.ScheduledProcedureStepSequence = Sequence()
    source = WorklistSource(store, engine, **options)
    return [response(identifier, item) for item in source(identifier)]


def test_worklist_import_cli_loads_files_and_hl7(db_backend: Backend, tmp_path: Path) -> None:
    folder = tmp_path / "wl"
    folder.mkdir()
    (folder / "a.dump").write_text(DUMP, encoding="utf-8")
    (folder / "orders.hl7").write_bytes(frame(ORM) + b"\n" + frame(OMI))
    (folder / "bad.hl7").write_text(ORM.replace("ACC-2001", ""), encoding="utf-8")
    env = {k.removeprefix("PACS_"): v for k, v in db_backend.env.items()}
    result = CliRunner().invoke(
        app,
        ["worklist", "import", str(folder)],
        env={f"PACS_{k}": v for k, v in env.items()},
    )
    assert result.exit_code == 1, result.output  # the bad file
    assert result.output.count("created ServiceRequest/") == 3
    assert "accession number missing" in result.output
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    try:
        [first] = _mwl(store, engine, "ACC-1001")
        assert first.RequestedProcedureID == "RP-1001"
        assert list(first.MedicalAlerts) == ["Pacemaker", "Diabetes"]
        step = first.ScheduledProcedureStepSequence[0]
        assert (step.ScheduledProcedureStepID, step.ScheduledStationName) == (
            "SPS-1001",
            "CT-ROOM-2",
        )
        assert list(step.ScheduledStationAETitle) == ["CT01", "CT02"]
        [omi] = _mwl(store, engine, "ACC-3001")
        assert omi.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MR01"
        # importing again replaces (no second ServiceRequest)
        again = CliRunner().invoke(
            app, ["worklist", "import", str(folder / "a.dump")], env=db_backend.env
        )
        assert "updated ServiceRequest/" in again.output
        assert len(_mwl(store, engine, "ACC-1001")) == 1
    finally:
        engine.dispose()


def test_one_ae_serves_several_organisations(db_backend: Backend) -> None:
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    try:
        patient = store.create(patient_of(_full_item()))
        for n, name in enumerate(("Clinic A", "Clinic B"), start=1):
            org = store.create({"resourceType": "Organization", "name": name})
            item = _full_item(accession_number=f"ORG-{n}", scheduled_station_ae_titles=())
            body = service_request_of(item, patient["id"])
            body["performer"] = [{"reference": f"Organization/{org['id']}"}]
            store.create(body)
        plain = _mwl(store, engine, "ORG-*")
        assert all(
            "ScheduledStationAETitle" not in r.ScheduledProcedureStepSequence[0]
            or not r.ScheduledProcedureStepSequence[0].ScheduledStationAETitle
            for r in plain
        )
        shared = _mwl(
            store, engine, "ORG-*", station_organisations={"CT09": ("Clinic A", "Clinic B")}
        )
        assert sorted(
            (r.AccessionNumber, r.ScheduledProcedureStepSequence[0].ScheduledStationAETitle)
            for r in shared
        ) == [("ORG-1", "CT09"), ("ORG-2", "CT09")]
    finally:
        engine.dispose()


def _exchange(port: int, *messages: bytes) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(messages))
        reader = read_frames(sock)
        answers = []
        for _ in messages:
            answer = reader()
            assert answer is not None
            answers.append(answer.decode())
        return answers


def test_mllp_listener_acknowledges_after_storing(db_backend: Backend) -> None:
    engine = create_index_engine(db_backend.settings)
    store = FhirStore(engine)
    listener = MLLPListener("127.0.0.1", 0, lambda raw: receive(store, raw))
    listener.start()
    try:
        oru = ORM.replace("ORM^O01", "ORU^R01")
        no_accession = OMI.replace("IPC|ACC-3001|", "IPC||")
        good, unsupported, missing, garbage = _exchange(
            listener.port,
            frame(ORM),
            frame(oru),
            frame(no_accession),
            frame(b"this is not HL7"),
        )
        assert "\rMSA|AA|MSG-1" in good
        assert len(_mwl(store, engine, "ACC-2001")) == 1  # stored before the AA
        assert "\rMSA|AR|MSG-1|" in unsupported and "|200^" in unsupported
        assert "\rMSA|AE|MSG-2|" in missing and "\rERR||OBR^1^18|101^" in missing
        assert "\rMSA|AR|" in garbage and "ERR|" in garbage
        [cancel] = _exchange(listener.port, frame(ORM.replace("ORC|NW|", "ORC|CA|")))
        assert "MSA|AA|" in cancel
        assert _mwl(store, engine, "ACC-2001") == []
    finally:
        listener.stop()
        engine.dispose()
