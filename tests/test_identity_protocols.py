"""Patient identity over every way in and out, against a running archive: storescu and
pynetdicom C-STORE, STOW-RS, ``pacs import``; quarantined objects never reach C-FIND, QIDO-RS
or WADO-RS; ``/api/quarantine`` and ``pacs quarantine``; one object sent over C-STORE and then
STOW-RS or import (and the other way round) is an identical re-send."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from rich.console import Console

from pacs.config import IdentityConflictPolicy
from pacs.importer import run_import
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.dimse_tools import pynetdicom_store, storescu, wait_until, write_part10
from tests.test_identity import PATIENT_2

FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
CONTEXTS = [(CTImageStorage, ExplicitVRLittleEndian), (CTImageStorage, ImplicitVRLittleEndian)]


def _ct(study: str, series: str, index: int, **attributes: Any) -> Dataset:
    ds = ct_slice(study, series, index, size=16)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _files(folder: Path, study: str, series: str, count: int, **patient: Any) -> list[Path]:
    return [
        write_part10(folder / f"{i}.dcm", _ct(study, series, i, **patient)) for i in range(count)
    ]


def _multipart(*parts: bytes) -> tuple[bytes, dict[str, str]]:
    body = io.BytesIO()
    for data in parts:
        body.write(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n")
    body.write(b"--B--\r\n")
    return body.getvalue(), {
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=B'
    }


def _stow(archive: RunningArchive, *paths: Path) -> httpx.Response:
    body, headers = _multipart(*(p.read_bytes() for p in paths))
    return httpx.post(f"{archive.http}/dicomweb/studies", content=body, headers=headers, timeout=30)


def _instances(archive: RunningArchive, study: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{archive.http}/dicomweb/studies/{study}/instances",
        params={"includefield": "PatientID"},
        timeout=30,
    )
    return [] if response.status_code == 204 else list(response.json())


def _patient_ids(instances: list[dict[str, Any]]) -> set[str]:
    return {i["00100020"]["Value"][0] for i in instances if "00100020" in i}


def _imaging_study(archive: RunningArchive, study: str) -> dict[str, Any] | None:
    bundle = httpx.get(
        f"{archive.http}/fhir/ImagingStudy",
        params={"identifier": f"urn:dicom:uid|urn:oid:{study}"},
        timeout=30,
    ).json()
    entries = bundle.get("entry") or []
    return entries[0]["resource"] if entries else None


def _c_find(archive: RunningArchive, **keys: str) -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = keys.pop("level", "STUDY")
    identifier.PatientID = ""
    identifier.StudyInstanceUID = ""
    identifier.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        found = [
            ds
            for status, ds in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind
            )
            if status is not None and status.Status in (0xFF00, 0xFF01) and ds is not None
        ]
    finally:
        assoc.release()
    return found


def test_conflicts_are_refused_by_every_protocol(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    study, series = generate_uid(), generate_uid()
    first = _files(tmp_path / "p1", study, series, 3)
    assert set(storescu(archive.dicom_port, first).statuses.values()) == {"Success"}
    # C-STORE: a second patient's series in the study, and in the same series
    intruders = [
        write_part10(tmp_path / "p2" / "a.dcm", _ct(study, generate_uid(), 0, **PATIENT_2)),
        write_part10(tmp_path / "p2" / "b.dcm", _ct(study, series, 9, **PATIENT_2)),
    ]
    answers = pynetdicom_store(archive.dicom_port, intruders, CONTEXTS)
    assert [status for status, _ in answers] == [0xA900, 0xA900]
    assert [comment for _, comment in answers] == [
        "StudyInstanceUID of another patient (PatientID)",
        "SeriesInstanceUID of another patient (PatientID)",
    ]
    # STOW-RS: 409, FailureReason 0xA900, the conflict named in a Warning header
    response = _stow(archive, *intruders)
    assert response.status_code == 409
    failed = response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert [item[FAILURE_REASON]["Value"][0] for item in failed] == [0xA900, 0xA900]
    assert "StudyInstanceUID of another patient" in response.headers["warning"]
    assert response.headers["warning"].startswith('299 - "identity_conflict: ')
    # import: counted as rejected, exit 1
    console = Console(file=io.StringIO(), width=200)
    assert run_import(archive.backend.settings, [tmp_path / "p2"], console) == 1
    report = console.file.getvalue()  # type: ignore[attr-defined]
    assert "identity_conflict: SeriesInstanceUID of another patient" in report
    # nothing filed under the first patient's study
    instances = _instances(archive, study)
    assert len(instances) == 3
    assert _patient_ids(instances) == {"PHANTOM-1"}
    log = archive.log()
    assert "not archived: identity_conflict" in log
    assert "OTHER-2" not in log and "Other^Person" not in log


def test_the_same_object_over_c_store_stow_and_import_is_an_identical_resend(
    archive: RunningArchive, tmp_path: Path
) -> None:
    """storescu re-encodes the data set and the archive writes its own file meta: the same
    file sent again by STOW-RS or import, or first by STOW-RS and then storescu, succeeds."""
    require_tool("storescu")
    study = generate_uid()
    c_store_first = _files(tmp_path / "a", study, generate_uid(), 2)
    stow_first = _files(tmp_path / "b", study, generate_uid(), 2)
    for options in ((), ("-xi",)):  # negotiated: explicit VR, then implicit VR only
        assert set(storescu(archive.dicom_port, c_store_first, *options).statuses.values()) == {
            "Success"
        }
        assert _stow(archive, *c_store_first).status_code == 200
        console = Console(file=io.StringIO(), width=200)
        assert run_import(archive.backend.settings, [tmp_path / "a"], console) == 0
        assert "duplicate" in console.file.getvalue()  # type: ignore[attr-defined]
        assert _stow(archive, *stow_first).status_code == 200
        assert set(storescu(archive.dicom_port, stow_first, *options).statuses.values()) == {
            "Success"
        }
    assert len(_instances(archive, study)) == 4


def test_quarantine_is_invisible_until_released(backend: Backend, tmp_path: Path) -> None:
    require_tool("storescu")
    archive = start_archive(backend, tmp_path / "serve.log", PACS_IDENTITY_CONFLICT="quarantine")
    try:
        _quarantine_round(archive, tmp_path)
    finally:
        stop_archive(archive)


def _quarantine_round(archive: RunningArchive, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    first = _files(tmp_path / "p1", study, series, 3)
    assert set(storescu(archive.dicom_port, first).statuses.values()) == {"Success"}
    held_ds = _ct(study, series, 7, **PATIENT_2)
    other_ds = _ct(study, generate_uid(), 8, **PATIENT_2)
    held = write_part10(tmp_path / "p2" / "held.dcm", held_ds)
    other = write_part10(tmp_path / "p2" / "other.dcm", other_ds)
    [(status, comment)] = pynetdicom_store(archive.dicom_port, [held], CONTEXTS)
    assert status == 0xB000
    assert comment.startswith("quarantined: SeriesInstanceUID of another patient")
    stow = _stow(archive, other)
    assert stow.status_code == 202
    [item] = stow.json()["00081199"]["Value"]  # ReferencedSOPSequence, with a warning
    assert item["00081196"]["Value"] == [0xB000] and "00081190" not in item
    # never in a query or a retrieve
    instances = _instances(archive, study)
    assert len(instances) == 3 and _patient_ids(instances) == {"PHANTOM-1"}
    qido = httpx.get(f"{archive.http}/dicomweb/studies", params={"PatientID": "OTHER-2"})
    assert qido.status_code == 204 or qido.json() == []
    assert _c_find(archive, PatientID="OTHER-2") == []
    assert [ds.StudyInstanceUID for ds in _c_find(archive, PatientID="PHANTOM-1")] == [study]
    found = _c_find(archive, level="IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series)
    assert {ds.SOPInstanceUID for ds in found} == {dcmread(p).SOPInstanceUID for p in first}
    wado = f"{archive.http}/dicomweb/studies/{study}/series/{series}/instances/"
    assert httpx.get(wado + held_ds.SOPInstanceUID).status_code == 404
    # the administrator's view: the CLI and the API
    listed = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "quarantine", "list"],
        env=archive.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "quarantine: 2 objects" in listed.stdout
    entries = httpx.get(f"{archive.http}/api/quarantine").json()["entries"]
    assert [e["sop_instance_uid"] for e in entries] == [
        held_ds.SOPInstanceUID,
        other_ds.SOPInstanceUID,
    ]
    assert entries[0]["patient_id"] == "OTHER-2" and entries[0]["source_channel"] == "dimse"
    held_pk, other_pk = entries[0]["pk"], entries[1]["pk"]
    # a release re-checks: still a conflict, still held
    again = httpx.post(f"{archive.http}/api/quarantine/{held_pk}/release", timeout=30)
    assert again.status_code == 409
    assert again.json()["reason"].startswith("SeriesInstanceUID of another patient")
    released = httpx.post(
        f"{archive.http}/api/quarantine/{held_pk}/release",
        params={"as_new_study": "true"},
        timeout=30,
    )
    assert released.status_code == 200, released.text
    new_study = released.json()["study_instance_uid"]
    assert new_study != study
    assert _patient_ids(_instances(archive, new_study)) == {"OTHER-2"}
    # FHIR: the released study has its ImagingStudy; the first one never counted the held object
    assert wait_until(lambda: _imaging_study(archive, new_study) is not None, 60)
    assert _imaging_study(archive, study)["numberOfInstances"] == 3  # type: ignore[index]
    discarded = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "quarantine", "discard", str(other_pk)],
        env=archive.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert discarded.returncode == 0, discarded.stderr
    assert httpx.get(f"{archive.http}/api/quarantine").json()["entries"] == []
    assert httpx.post(f"{archive.http}/api/quarantine/{other_pk}/discard").status_code == 404
    assert len(_instances(archive, study)) == 3
    # import in quarantine mode counts it as quarantined, not as rejected
    console = Console(file=io.StringIO(), width=200)
    settings = archive.backend.with_settings(identity_conflict=IdentityConflictPolicy.QUARANTINE)
    assert run_import(settings, [other], console) == 0
    assert "quarantined" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _quiet_pynetdicom(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="pynetdicom")
