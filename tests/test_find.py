"""C-FIND SCP end to end: DCMTK ``findscu`` and a pynetdicom SCU against ``pacs serve``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from testkit.dicom_factory import ct_slice, write_ct_series
from tests.conftest import RunningArchive, require_tool
from tests.dimse_tools import storescu


def write_named_study(folder: Path, charset: str, name: str, patient_id: str, date: str) -> Path:
    """One CT object whose patient name is encoded in ``charset``."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_slice(pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), 0, size=8)
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.StudyDate = date
    path = folder / f"{patient_id}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def findscu(
    archive: RunningArchive, out: Path, model: str, *keys: str, query: Path | None = None
) -> list[Dataset]:
    """Run ``findscu`` (``-S`` study root, ``-P`` patient root); the responses it extracted."""
    out.mkdir(parents=True)
    args = ["findscu", model, "-aet", "FINDSCU", "-aec", "PACS", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(archive.dicom_port)]
    if query is not None:
        args.append(str(query))
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_findscu_levels_and_matching(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("findscu")
    require_tool("storescu")
    smith = write_ct_series(
        tmp_path / "smith", slices=3, size=8, patient_id="US-1", patient_name="Smith^John"
    )
    petrov = write_named_study(tmp_path / "c", "ISO_IR 144", "Петров^Иван", "RU-144", "20260110")
    sidorova = write_named_study(
        tmp_path / "c", "ISO_IR 192", "Сидорова^Анна", "RU-192", "20250505"
    )
    sent = storescu(archive.dicom_port, [*smith, petrov, sidorova])
    assert len(sent.succeeded) == 5, sent.output[-2000:]
    first = pydicom.dcmread(smith[0])
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    petrov_study = pydicom.dcmread(petrov).StudyInstanceUID
    counter = iter(range(100))

    def run(model: str, *keys: str, query: Path | None = None) -> list[Dataset]:
        return findscu(archive, tmp_path / f"rsp{next(counter)}", model, *keys, query=query)

    # STUDY level, study root: case-insensitive wildcard name, computed attributes
    (match,) = run(
        "-S",
        "QueryRetrieveLevel=STUDY",
        "PatientName=smith*",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy",
        "PatientAge",
    )
    assert match.StudyInstanceUID == study
    assert match.QueryRetrieveLevel == "STUDY"
    assert match.ModalitiesInStudy == "CT"
    assert (match.NumberOfStudyRelatedSeries, match.NumberOfStudyRelatedInstances) == (1, 3)
    assert match.SOPClassesInStudy == first.SOPClassUID
    assert match["PatientAge"].VM == 0 and str(match.PatientName) == "Smith^John"

    # date ranges (open and closed), UID lists, unknown study
    def studies(*keys: str) -> set[str]:
        found = run("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
        return {ds.StudyInstanceUID for ds in found}

    assert studies("StudyDate=20260101-") == {study, petrov_study}
    assert studies("StudyDate=20260101-20260111") == {petrov_study}
    assert len(studies("StudyDate=-20251231")) == 1
    assert studies(f"StudyInstanceUID={study}\\{petrov_study}") == {study, petrov_study}
    assert studies("StudyInstanceUID=1.2.3.4.5.6.7") == set()

    # Cyrillic: a query in ISO_IR 144 and one in UTF-8; names come back decoded
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 144"
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "петров*"
    query.PatientID = ""
    query_path = tmp_path / "query144.dcm"
    query.save_as(query_path, implicit_vr=False, little_endian=True)
    (match,) = run("-S", query=query_path)
    assert (str(match.PatientName), match.PatientID) == ("Петров^Иван", "RU-144")
    (match,) = run(
        "-S", "SpecificCharacterSet=ISO_IR 192", "QueryRetrieveLevel=STUDY", "PatientName=СИДОРОВА*"
    )
    assert str(match.PatientName) == "Сидорова^Анна"
    assert match.SpecificCharacterSet == "ISO_IR 192"

    # PATIENT level, patient root
    (match,) = run(
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=US-1",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    assert str(match.PatientName) == "Smith^John"
    assert match.NumberOfPatientRelatedStudies == 1
    assert (match.NumberOfPatientRelatedSeries, match.NumberOfPatientRelatedInstances) == (1, 3)

    # SERIES level (study root) and IMAGE level (patient root)
    (match,) = run(
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    assert (match.SeriesInstanceUID, match.Modality) == (series, "CT")
    assert match.NumberOfSeriesRelatedInstances == 3
    images = run(
        "-P",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=US-1",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    assert [ds.SOPInstanceUID for ds in images] == [
        pydicom.dcmread(path).SOPInstanceUID for path in smith
    ]
    assert "Smith" not in archive.log() and "RU-144" not in archive.log()


def _find(
    port: int, model: str, identifier: Dataset, cancel_after: int | None = None
) -> tuple[list[Dataset], int]:
    """A pynetdicom C-FIND; the pending identifiers and the final status."""
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, found in assoc.send_c_find(identifier, model):
            assert status, "no response"
            if status.Status in (0xFF00, 0xFF01):
                assert found is not None
                matches.append(found)
                if cancel_after is not None and len(matches) == cancel_after:
                    assoc.send_c_cancel(1, assoc.accepted_contexts[0].context_id)
            else:
                final = status.Status
    finally:
        assoc.release()
    return matches, final


def test_c_find_cancel_and_failures(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    files = write_ct_series(tmp_path / "many", slices=120, size=8, patient_id="MANY")
    assert len(storescu(archive.dicom_port, files).succeeded) == 120
    first = pydicom.dcmread(files[0])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = first.StudyInstanceUID
    identifier.SeriesInstanceUID = first.SeriesInstanceUID
    identifier.SOPInstanceUID = ""
    identifier.SOPClassesInStudy = ""
    identifier.NumberOfPatientRelatedStudies = ""
    identifier.NumberOfPatientRelatedInstances = ""
    model = StudyRootQueryRetrieveInformationModelFind
    matches, final = _find(archive.dicom_port, model, identifier)
    assert (len(matches), final) == (120, 0x0000)
    matches, final = _find(archive.dicom_port, model, identifier, cancel_after=1)
    assert final == 0xFE00 and len(matches) < 120

    no_study = Dataset()
    no_study.QueryRetrieveLevel = "SERIES"
    no_study.Modality = "CT"
    assert _find(archive.dicom_port, model, no_study) == ([], 0xA900)
    study_root_patient = Dataset()
    study_root_patient.QueryRetrieveLevel = "PATIENT"
    study_root_patient.PatientID = "MANY"
    assert _find(archive.dicom_port, model, study_root_patient) == ([], 0xA900)
    bad_date = Dataset()
    bad_date.QueryRetrieveLevel = "PATIENT"
    bad_date.PatientBirthDate = "abc-def"
    patient_root = PatientRootQueryRetrieveInformationModelFind
    assert _find(archive.dicom_port, patient_root, bad_date) == ([], 0xA900)
    assert "MANY" not in archive.log()
