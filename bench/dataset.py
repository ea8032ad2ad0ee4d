"""Synthetic CT studies for the ingest benchmark, generated once and cached under bench/out/."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StudySet:
    """A cached set of studies: ``studies[i]`` is the sorted list of Part-10 files of study i."""

    name: str
    studies: list[list[Path]]
    total_bytes: int

    @property
    def files(self) -> list[Path]:
        """Every file, study by study."""
        return [path for study in self.studies for path in study]

    @property
    def count(self) -> int:
        """Number of instances."""
        return sum(len(study) for study in self.studies)

    def split(self, parts: int) -> list[list[Path]]:
        """Whole studies dealt round-robin into ``parts`` groups (one per client process)."""
        groups: list[list[Path]] = [[] for _ in range(parts)]
        for i, study in enumerate(self.studies):
            groups[i % parts].extend(study)
        return [group for group in groups if group]


def _slice(
    study_uid: str, series_uid: str, frame_uid: str, study_no: int, index: int, size: int
) -> Dataset:
    """One axial CT slice with int16 HU-like noise (incompressible, like a worst case)."""
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
    ds.FrameOfReferenceUID = frame_uid
    ds.PatientName = f"Bench^Phantom{study_no:03d}"
    ds.PatientID = f"BENCH-{study_no:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"BENCH{study_no:04d}"
    ds.StudyID = str(study_no)
    ds.StudyDescription = "CT CHEST BENCH"
    ds.ReferringPhysicianName = "Referrer^Bench"
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
    rng = np.random.default_rng(study_no * 100_003 + index)
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    return ds


def _write_study(folder: Path, study_no: int, slices: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(slices):
        path = folder / f"{i:04d}.dcm"
        ds = _slice(study_uid, series_uid, frame_uid, study_no, i, size)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_set(root: Path, name: str, studies: int, slices: int, size: int) -> StudySet:
    """The cached set ``root/name``, generated first if missing or made with other sizes."""
    folder = root / name
    spec = {"studies": studies, "slices": slices, "size": size}
    manifest = folder / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("spec") == spec:
            found = [sorted((folder / d).glob("*.dcm")) for d in saved["folders"]]
            if [len(s) for s in found] == [slices] * studies:
                return StudySet(name, found, int(saved["bytes"]))
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {name}: {studies} x {slices} slices of {size}x{size} int16 ...", flush=True)
    written = [_write_study(folder / f"study{n:03d}", n, slices, size) for n in range(studies)]
    total = sum(p.stat().st_size for s in written for p in s)
    folders = [f"study{n:03d}" for n in range(studies)]
    manifest.write_text(json.dumps({"spec": spec, "folders": folders, "bytes": total}))
    return StudySet(name, written, total)
