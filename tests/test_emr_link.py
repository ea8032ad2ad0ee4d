"""EMR link end to end (issue 6 flows) against a running archive, on SQLite and PostgreSQL.

Real peers: the ``fhirpy`` FHIR client, DCMTK ``findscu -W`` (worklist, Cyrillic names),
``storescu`` (studies) and ``getscu`` (the verified SR); every FHIR resource returned is
validated with ``fhir.resources`` (R4B). The AI result row is made directly through
``inference.records`` (the CT pipeline itself is tested elsewhere).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from inference.records import ResultRecord, store_result
from pacs import changes
from pacs.emr.tables import FeedPosition
from pacs.index.engine import create_index_engine
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive

pytestmark = pytest.mark.dcmtk

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PROCEDURE = "КТ органов грудной клетки"  # noqa: RUF001 (Cyrillic on purpose)
MRN_SYSTEM = "urn:oid:1.2.643.5.1.13.13.12.2.77.7973"
SNILS = "urn:oid:1.2.643.100.3"
MEASUREMENTS = {
    "right_lung_volume_ml": 2510.4,
    "left_lung_volume_ml": 2205.0,
    "emphysema_index_percent": 1.5,
    "ground_glass_percent": 21.0,
    "consolidation_percent": 6.0,
    "involvement_percent": 27.0,
    "ct_severity_grade": "CT-2",
}


@pytest.fixture
def emr_archive(db_backend: Backend, tmp_path: Path) -> Iterator[RunningArchive]:
    """A running archive whose EMR-link consumer polls often."""
    require_tool("findscu")
    running = start_archive(
        db_backend,
        tmp_path / "serve.log",
        PACS_EMR_FEED_INTERVAL="0.2",
        PACS_SCP_PROCESSES="1",
        PACS_STABLE_AFTER_SECONDS="600",
    )
    yield running
    stop_archive(running)


def feed_position(engine: Engine) -> int:
    """The EMR-link consumer's stored position."""
    with engine.connect() as conn:
        return int(conn.scalar(select(FeedPosition.seq)) or 0)


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` after checking it against its fhir.resources R4B model."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def search(client: SyncFHIRClient, rtype: str, **params: Any) -> list[dict[str, Any]]:
    """Every match of a search, each validated."""
    bundle = client.resources(rtype).search(**params).fetch_raw()
    return [validated(plain(e["resource"])) for e in bundle.get("entry", [])]


def plain(resource: Any) -> dict[str, Any]:
    """A fhirpy resource as plain JSON (references included)."""
    return resource.serialize() if hasattr(resource, "serialize") else dict(resource)


def make_referral(client: SyncFHIRClient, accession: str, day: date) -> dict[str, Any]:
    """Organisation, radiologist, requester, Patient (Cyrillic), Encounter, ServiceRequest."""
    hospital = client.resource("Organization", name="City Hospital 1")
    hospital.save()
    radiologist = client.resource("Practitioner", name=[{"family": "Сидоров", "given": ["Пётр"]}])
    radiologist.save()
    requester = client.resource("Practitioner", name=[{"family": "Smith", "given": ["Ann"]}])
    requester.save()
    patient = client.resource(
        "Patient",
        identifier=[
            {"system": SNILS, "value": "112-233-445 95"},
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                "system": MRN_SYSTEM,
                "value": "MRN-4711",
            },
        ],
        name=[{"use": "official", "family": "Петров", "given": ["Иван", "Сергеевич"]}],
        gender="male",
        birthDate="1961-04-12",
    )
    patient.save()
    encounter = client.resource(
        "Encounter",
        status="in-progress",
        identifier=[{"system": "urn:pacs:test-case", "value": "CASE-1"}],
        subject=patient.to_reference(),
        **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
    )
    encounter.save()
    request = client.resource(
        "ServiceRequest",
        status="active",
        intent="order",
        priority="urgent",
        identifier=[
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "system": "urn:pacs:accession",
                "value": accession,
            }
        ],
        code={
            "coding": [
                {"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"},
                {"system": DCM, "code": "CT"},
            ],
            "text": PROCEDURE,
        },
        subject=patient.to_reference(),
        encounter=encounter.to_reference(),
        requester=requester.to_reference(),
        performer=[hospital.to_reference(), radiologist.to_reference()],
        occurrenceDateTime=f"{day.isoformat()}T09:30:00+03:00",
    )
    request.save()
    return {
        "patient": validated(patient.serialize()),
        "encounter": validated(encounter.serialize()),
        "request": validated(request.serialize()),
    }


def findscu_worklist(
    archive: RunningArchive, folder: Path, *keys: str | bytes
) -> list[pydicom.Dataset]:
    """``findscu -W -X``: the worklist responses as data sets."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rsp*.dcm"):
        old.unlink()
    args: list[str | bytes] = ["findscu", "-W", "-X", "-aet", "CT01", "-aec", "PACS"]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, cwd=folder, capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


def write_study(
    folder: Path, study_uid: str, slices: int, patient_id: str, issuer: str, accession: str
) -> tuple[list[Path], Dataset]:
    """A small CT series (with IssuerOfPatientID) as Part-10 files, of the referral's patient
    as the worklist gave it (the EMR link links on identifier and demographics)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths, first = [], None
    for i in range(slices):
        ds = ct_slice(
            study_uid, series_uid, i, 16, patient_id=patient_id, accession_number=accession
        )
        ds.IssuerOfPatientID = issuer
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Петров^Иван^Сергеевич"
        ds.PatientBirthDate, ds.PatientSex = "19610412", "M"
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        first = first or ds
    assert first is not None
    return paths, first


def ai_sr(evidence: Dataset, folder: Path) -> Path:
    """An unverified SR standing in for the AI's own report."""
    root = hd.sr.ContainerContentItem(name=Code("126000", "DCM", "Imaging Measurement Report"))
    root.ContentSequence = [
        hd.sr.TextContentItem(
            name=Code("121071", "DCM", "Finding"), value="CT-2", relationship_type="CONTAINS"
        )
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=9002,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test AI",
        is_complete=True,
    )
    path = folder / "ai-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def storescu(archive: RunningArchive, *paths: Path) -> None:
    """Send files with DCMTK storescu; every one must succeed."""
    run = subprocess.run(
        ["storescu", "-aec", "PACS", "127.0.0.1", str(archive.dicom_port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def getscu(archive: RunningArchive, folder: Path, study: str, series: str, sop: str) -> Dataset:
    """One instance fetched with DCMTK getscu (C-GET)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [
            "getscu", "-S", "-aec", "PACS", "-od", str(folder), "127.0.0.1",
            str(archive.dicom_port), "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}",
            "-k", f"SOPInstanceUID={sop}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    files = list(folder.glob("*"))
    assert run.returncode == 0 and len(files) == 1, run.stdout + run.stderr
    return pydicom.dcmread(files[0])


def test_emr_flows_end_to_end(emr_archive: RunningArchive, tmp_path: Path) -> None:
    """Referral -> worklist -> study -> AI report -> sign-off -> case view."""
    archive = emr_archive
    client = SyncFHIRClient(f"{archive.http}/fhir")
    http = httpx.Client(base_url=archive.http, timeout=30)
    assert http.put("/api/aes/CT01", json={"host": "127.0.0.1", "port": 104,
                    "organisation": "City Hospital 1"}).status_code in (200, 201)  # fmt: skip
    day = date.today() + timedelta(days=1)
    case = make_referral(client, "A0001", day)
    patient_id = case["patient"]["id"]

    # 1. Referral -> worklist: findscu -W, UTF-8 and Cyrillic ISO_IR 144 answers
    step = "ScheduledProcedureStepSequence[0]"
    common = [
        "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
        "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        f"{step}.ScheduledStationAETitle=CT01",
        f"{step}.ScheduledProcedureStepStartDate={day:%Y%m%d}-{day + timedelta(days=2):%Y%m%d}",
        f"{step}.ScheduledProcedureStepStartTime", f"{step}.Modality=CT",
        f"{step}.ScheduledPerformingPhysicianName", f"{step}.ScheduledProcedureStepID",
    ]  # fmt: skip
    utf8 = findscu_worklist(
        archive, tmp_path / "mwl1", "SpecificCharacterSet=ISO_IR 192",
        "PatientName=петров*", *common,
    )  # fmt: skip
    assert len(utf8) == 1
    item = utf8[0]
    assert item.SpecificCharacterSet == "ISO_IR 192"
    assert str(item.PatientName) == "Петров^Иван^Сергеевич"
    assert (item.AccessionNumber, item.RequestedProcedureID) == ("A0001", "A0001")
    assert item.RequestedProcedureDescription == PROCEDURE
    assert (item.PatientID, item.IssuerOfPatientID) == ("MRN-4711", MRN_SYSTEM[8:])
    assert (item.PatientBirthDate, item.PatientSex) == ("19610412", "M")
    sps = item.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle) == ("CT", "CT01")
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        f"{day:%Y%m%d}",
        "093000",
    )
    assert str(sps.ScheduledPerformingPhysicianName) == "Сидоров^Пётр"
    cyrillic = findscu_worklist(
        archive, tmp_path / "mwl2", "SpecificCharacterSet=ISO_IR 144",
        b"PatientName=" + "Петров*".encode("iso8859_5"), "AccessionNumber=A0001",
    )  # fmt: skip
    assert len(cyrillic) == 1 and cyrillic[0].SpecificCharacterSet == "ISO_IR 144"
    raw = (tmp_path / "mwl2" / "rsp0001.dcm").read_bytes()
    assert "Петров^Иван".encode("iso8859_5") in raw
    assert str(cyrillic[0].PatientName) == "Петров^Иван^Сергеевич"
    for miss in (f"{step}.Modality=MR", f"{step}.ScheduledStationAETitle=MR01", "PatientID=X"):
        assert findscu_worklist(archive, tmp_path / "mwl3", "AccessionNumber", miss) == []

    # 2. Study -> record: ImagingStudy linked by identifier / accession, kept in step
    study_uid = generate_uid()
    ct, first = write_study(
        tmp_path / "ct", study_uid, 3, "MRN-4711", MRN_SYSTEM[8:], "A0001"
    )  # fmt: skip
    storescu(archive, *ct)
    key = f"urn:dicom:uid|urn:oid:{study_uid}"

    def study_with(instances: int) -> dict[str, Any] | None:
        found = search(client, "ImagingStudy", identifier=key)
        return found[0] if found and found[0].get("numberOfInstances") == instances else None

    imaging = wait_for(lambda: study_with(3), "ImagingStudy")
    assert imaging["subject"]["reference"] == f"Patient/{patient_id}"
    assert imaging["basedOn"] == [{"reference": f"ServiceRequest/{case['request']['id']}"}]
    assert imaging["encounter"]["reference"] == f"Encounter/{case['encounter']['id']}"
    assert imaging["modality"] == [{"system": DCM, "code": "CT"}]
    assert imaging["numberOfSeries"] == 1 and imaging["started"].startswith("2026-11-25T12:00")
    endpoint = validated(http.get(f"/fhir/{imaging['endpoint'][0]['reference']}").json())
    assert endpoint["address"].endswith("/dicomweb")
    # the exam stays on the worklist until it is reported (PACS_WORKLIST_REMOVE_ON_ARRIVAL off)
    assert len(findscu_worklist(archive, tmp_path / "mwl4", "AccessionNumber=A0001")) == 1
    sr_path = ai_sr(first, tmp_path)
    storescu(archive, sr_path)
    imaging = wait_for(lambda: study_with(4), "ImagingStudy with the AI SR")
    assert imaging["numberOfSeries"] == 2

    stranger_uid = generate_uid()
    stranger, _ = write_study(tmp_path / "x", stranger_uid, 1, "UNKNOWN-1", "", "ZZ9")
    storescu(archive, *stranger)
    other = wait_for(
        lambda: search(client, "ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{stranger_uid}"),
        "ImagingStudy of an unknown patient",
    )[0]
    created = validated(http.get(f"/fhir/{other['subject']['reference']}").json())
    assert {"system": "urn:pacs:tags", "code": "reconcile"}.items() <= created["meta"]["tag"][
        0
    ].items()
    assert "basedOn" not in other

    # 3. AI result -> preliminary report (re-run: updated, never duplicated)
    engine = create_index_engine(archive.backend.settings)
    sr = pydicom.dcmread(sr_path)
    record = ResultRecord(
        study_uid, 1, "ct-chest", first.SeriesInstanceUID, {"lung-seg": "1.0.0"},
        MEASUREMENTS, "", "", sr.SOPInstanceUID, sr.SeriesInstanceUID,
    )  # fmt: skip
    result_pk = store_result(engine, record)
    report = wait_for(
        lambda: search(
            client, "DiagnosticReport", patient=patient_id, _include="DiagnosticReport:result"
        ),
        "DiagnosticReport",
    )
    reports = [r for r in report if r["resourceType"] == "DiagnosticReport"]
    observations = [r for r in report if r["resourceType"] == "Observation"]
    assert len(reports) == 1 and len(observations) == 7
    dr = reports[0]
    assert dr["status"] == "preliminary"
    assert dr["code"]["coding"][0]["code"] == "18748-4"
    assert dr["category"][0]["coding"][0]["code"] == "RAD"
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{imaging['id']}"}]
    assert dr["basedOn"] == imaging["basedOn"] and dr["encounter"] == imaging["encounter"]
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert by_code["right_lung_volume_ml"]["valueQuantity"] == {
        "value": 2510.4, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL",
    }  # fmt: skip
    assert by_code["ct_severity_grade"]["valueCodeableConcept"]["coding"][0]["code"] == "CT-2"
    device_ref = by_code["involvement_percent"]["device"]["reference"]
    for o in observations:
        assert o["status"] == "preliminary"
        assert o["derivedFrom"] == [{"reference": f"ImagingStudy/{imaging['id']}"}]
        assert o["device"]["reference"] == device_ref
    provenance = search(client, "Provenance", target=f"DiagnosticReport/{dr['id']}")
    assert len(provenance) == 1
    assert provenance[0]["agent"][0]["who"]["reference"] == device_ref
    assert provenance[0]["entity"][0]["what"]["identifier"]["value"].endswith(
        first.SeriesInstanceUID
    )
    assert store_result(engine, record) == result_pk  # a re-run: result.stored again
    with engine.connect() as conn:
        newest = changes.last_seq(conn)
    wait_for(lambda: feed_position(engine) >= newest, "the consumer to handle the re-run")
    again = search(
        client, "DiagnosticReport", patient=patient_id, _include="DiagnosticReport:result"
    )
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in report)
    assert len(search(client, "Provenance", target=f"DiagnosticReport/{dr['id']}")) == 1

    # 4. Sign-off: bad decisions change nothing, then amend the grade and sign
    view = http.get(f"/api/review/{result_pk}").json()
    assert view["status"] == "preliminary" and len(view["findings"]) == 7
    bad_grade = {"code": "ct_severity_grade", "action": "amend", "value": "CT-9"}
    unknown = {"code": "no-such-finding", "action": "accept"}
    for body, status in (
        ({"decision": "sign", "conclusion": "x", "findings": [unknown]}, 422),
        ({"decision": "sign", "conclusion": "x", "findings": [bad_grade]}, 422),
        ({"decision": "sign", "conclusion": ""}, 422),
        ({"decision": "maybe", "conclusion": "x"}, 422),
    ):  # fmt: skip
        assert http.post(f"/api/review/{result_pk}", json=body).status_code == status
    assert (
        http.post("/api/review/999999", json={"decision": "sign", "conclusion": "x"}).status_code
        == 404
    )
    assert (
        validated(http.get(f"/fhir/DiagnosticReport/{dr['id']}").json())["status"] == "preliminary"
    )
    signed = http.post(
        f"/api/review/{result_pk}",
        json={
            "decision": "sign",
            "conclusion": "Двусторонняя вирусная пневмония.",
            "organisation": "City Hospital 1",
            "findings": [
                {"code": "ct_severity_grade", "action": "amend", "value": "CT-3"},
                {"code": "emphysema_index_percent", "action": "reject"},
            ],
        },
    )
    assert signed.status_code == 200, signed.text
    decision = signed.json()["decision"]
    assert decision["signer"] == "local-admin" and decision["decision"] == "final"
    assert (
        http.post(
            f"/api/review/{result_pk}", json={"decision": "sign", "conclusion": "again"}
        ).status_code
        == 409
    )
    final = validated(http.get(f"/fhir/DiagnosticReport/{dr['id']}").json())
    assert final["status"] == "final" and final["conclusion"].startswith("Двусторонняя")
    # the referral is done: completed, and the worklist no longer offers it
    referral = validated(http.get(f"/fhir/ServiceRequest/{case['request']['id']}").json())
    assert referral["status"] == "completed"
    assert findscu_worklist(archive, tmp_path / "mwl5", "AccessionNumber=A0001") == []
    assert final["resultsInterpreter"][0]["reference"] == decision["practitioner"]
    statuses = {
        o["code"]["coding"][0]["code"]: (o["status"], o.get("valueCodeableConcept", {}).get("text"))
        for o in (
            validated(http.get(f"/fhir/{ref['reference']}").json()) for ref in final["result"]
        )
    }
    assert statuses["ct_severity_grade"] == ("amended", "CT-3")
    assert statuses["emphysema_index_percent"][0] == "cancelled"
    assert statuses["involvement_percent"][0] == "final"
    # the verified SR is in the study (QIDO-RS finds its series, C-GET fetches it)
    sr_uid = decision["sr_sop_instance_uid"]
    qido = http.get(f"/dicomweb/studies/{study_uid}/instances", params={"SOPInstanceUID": sr_uid})
    sr_series = qido.json()[0]["0020000E"]["Value"][0]
    found_sr = getscu(archive, tmp_path / "get1", study_uid, sr_series, sr_uid)
    assert found_sr.VerificationFlag == "VERIFIED" and found_sr.CompletionFlag == "COMPLETE"
    observer = found_sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName).startswith("local-admin")
    assert observer.VerifyingOrganization == "City Hospital 1"
    ai_original = pydicom.dcmread(sr_path)  # the AI's SR is unchanged
    original = getscu(
        archive, tmp_path / "get2", study_uid, ai_original.SeriesInstanceUID,
        ai_original.SOPInstanceUID,
    )  # fmt: skip
    assert original.VerificationFlag == "UNVERIFIED" and original == ai_original
    rows = http.get("/api/review/" + str(result_pk)).json()
    assert rows["status"] == "final" and rows["decision"]["findings"][-1]["value"] == "CT-3"

    # 5. Case view: Patient/$everything and the Encounter with its studies and reports
    capability = validated(http.get("/fhir/metadata").json())
    [patient_rest] = [r for r in capability["rest"][0]["resource"] if r["type"] == "Patient"]
    assert [op["name"] for op in patient_rest["operation"]] == ["everything"]
    everything = http.get(f"/fhir/Patient/{patient_id}/$everything").json()
    validated(everything)
    kinds = [e["resource"]["resourceType"] for e in everything["entry"]]
    for e in everything["entry"]:
        validated(e["resource"])
    for kind in (
        "Patient",
        "Encounter",
        "ServiceRequest",
        "ImagingStudy",
        "DiagnosticReport",
        "Provenance",
        "Device",
    ):
        assert kind in kinds, kind
    assert kinds.count("Observation") == 7
    bundle = (
        client.resources("Encounter")
        .search(_id=case["encounter"]["id"])
        .revinclude("ImagingStudy", "encounter")
        .revinclude("DiagnosticReport", "encounter")
        .fetch_raw()
    )
    got = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert got == ["DiagnosticReport", "Encounter", "ImagingStudy"]
    for e in bundle["entry"]:
        validated(plain(e["resource"]))
