"""Synthetic DICOM objects generated in code for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def as_phantom_patient(ds: Dataset) -> Dataset:
    """Give ``ds`` the patient of ``ct_slice``'s defaults, so that objects from other sources
    (pydicom's test files, the real CT) can join one of its studies without an identity
    conflict (a study holds one patient)."""
    ds.PatientID, ds.PatientName = "PHANTOM-1", "Phantom^Chest"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.IssuerOfPatientID = ""
    return ds


def ct_slice(
    study_uid: str,
    series_uid: str,
    index: int,
    size: int = 512,
    patient_id: str = "PHANTOM-1",
    patient_name: str = "Phantom^Chest",
    accession_number: str = "ACC0001",
    frame_uid: str | None = None,
    seed: int | None = None,
) -> Dataset:
    """One axial CT slice (int16 HU-like noise, seeded) of a synthetic series."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid or generate_uid(
        prefix=None, entropy_srcs=[study_uid, "frame"]
    )
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20261125"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession_number
    ds.StudyID = "1"
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = "Referrer^Ann"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL 1mm"
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-0.5 * size, -0.5 * size, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    rng = np.random.default_rng(index if seed is None else seed)
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    return ds


def write_ct_series(
    folder: Path, slices: int, size: int = 512, study_uid: str | None = None, **patient: str
) -> list[Path]:
    """Write a synthetic CT series as Part-10 files; return their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(slices):
        path = folder / f"{i:04d}.dcm"
        ct_slice(study_uid, series_uid, i, size, **patient).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
