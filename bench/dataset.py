"""Synthetic CT studies for the ingest benchmark, generated once and cached under bench/out/."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from testkit.dicom_factory import ct_slice

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


def _write_study(folder: Path, study_no: int, slices: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(slices):
        path = folder / f"{i:04d}.dcm"
        ds = ct_slice(
            study_uid,
            series_uid,
            i,
            size,
            patient_id=f"BENCH-{study_no:04d}",
            patient_name=f"Bench^Phantom{study_no:03d}",
            accession_number=f"BENCH{study_no:04d}",
            frame_uid=frame_uid,
            seed=study_no * 100_003 + i,  # incompressible noise, different in every slice
        )
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
