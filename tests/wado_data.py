"""Test objects for WADO-RS: windowing phantoms, real JPEG 2000 CT, multi-frame native and RLE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from testkit.dicom_factory import as_phantom_patient, ct_slice
from tests.conftest import (
    RunningArchive,
    data_file,
    make_backend,
    require,
    start_archive,
    stop_archive,
)

MULTIFRAME_GRAYSCALE_WORD = "1.2.840.10008.5.1.4.1.1.7.3"


def windowing_slice(
    study_uid: str, series_uid: str, index: int, photometric: str = "MONOCHROME2", size: int = 32
) -> Dataset:
    """A slice whose pixel (0,0) is -1000 and (0,1) is +1000, window 0/400 in the object:
    under that window the first must render black and the second white (MONOCHROME2)."""
    ds = ct_slice(study_uid, series_uid, index, size=size)
    pixels = np.zeros((size, size), dtype=np.int16)
    pixels[0, 0], pixels[0, 1] = -1000, 1000
    ds.PixelData = pixels.tobytes()
    ds.PhotometricInterpretation = photometric
    ds.WindowCenter, ds.WindowWidth = 0, 400
    return ds


def native_multiframe(study_uid: str, frames: int = 3, size: int = 16) -> Dataset:
    """A native multi-frame grayscale image; frame k is filled with the value 100 * k."""
    ds = ct_slice(study_uid, generate_uid(), 0, size=size)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_GRAYSCALE_WORD
    ds.NumberOfFrames = frames
    stack = np.stack([np.full((size, size), 100 * k, dtype=np.int16) for k in range(1, frames + 1)])
    ds.PixelData = stack.tobytes()
    return ds


def _renamed(ds: Dataset, study_uid: str, series_uid: str) -> Dataset:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return as_phantom_patient(ds)


def j2k_ct(study_uid: str, count: int = 2) -> list[Dataset]:
    """``count`` slices of the real JPEG 2000 lossless CT (test data), UIDs filled in."""
    folder = data_file("totalsegmentator", "example_ct_dicom")
    series_uid = generate_uid()
    files = sorted(p for p in folder.iterdir() if p.is_file())[:count]
    return [_renamed(dcmread(path), study_uid, series_uid) for path in files]


def rle_rgb_2frame(study_uid: str) -> Dataset:
    """pydicom's two-frame RGB RLE Lossless image, in our study."""
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    require(path is not None, "pydicom test file SC_rgb_rle_2frame.dcm missing")
    return _renamed(dcmread(Path(str(path))), study_uid, generate_uid())


def module_archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningArchive]:
    """One running archive for a whole test module, on the backend ``request.param``
    (``sqlite-file`` or ``postgresql-s3``); one SCP process, so it starts fast."""
    database, storage = str(request.param).split("-")
    tmp = tmp_path_factory.mktemp(f"archive-{database}")
    backend = make_backend(request, tmp, database, storage)
    archive = start_archive(backend, tmp / "serve.log", PACS_SCP_PROCESSES="1")
    try:
        yield archive
    finally:
        stop_archive(archive)
