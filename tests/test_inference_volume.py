"""Series -> volume: geometry, decoding, HU, enhanced CT and every refusal reason."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, RLELossless, generate_uid

from inference.errors import RefusalReason, VolumeRefusedError
from inference.volume import build_volume
from pacs.config import Settings
from testkit.chest_phantom import chest_phantom, phantom_series
from tests.conftest import data_file

SETTINGS = Settings.model_validate({"inference_min_slices": 10})


def real_ct() -> Path:
    """The folder of the real JPEG 2000 CT series (test data)."""
    return data_file("totalsegmentator", "example_ct_dicom")


def real_ct_series() -> list[Dataset]:
    """The real JPEG 2000 CT series with the blank UIDs filled in."""
    files = sorted(real_ct().iterdir())
    assert len(files) == 20
    study, series = generate_uid(), generate_uid()
    datasets: list[Dataset] = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = "REAL-CT-1", "Real^Ct"
        datasets.append(ds)
    return datasets


@pytest.fixture(scope="module")
def phantom_slices() -> list[Dataset]:
    return phantom_series(chest_phantom(size=32, slices=16, involvement=0.3), shuffle_seed=7)


def fresh(datasets: list[Dataset]) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in datasets]


def refused(datasets: list[Dataset], settings: Settings = SETTINGS) -> VolumeRefusedError:
    with pytest.raises(VolumeRefusedError) as caught:
        build_volume(datasets, settings)
    return caught.value


def test_real_jpeg2000_ct_geometry_matches_simpleitk() -> None:
    datasets = real_ct_series()
    assert datasets[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    volume = build_volume(list(reversed(datasets)), SETTINGS)
    image = volume.image
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing() == pytest.approx((0.977, 0.977, 2.0), abs=1e-3)
    assert image.GetOrigin() == pytest.approx((-249.5, -437.5, -804.5), abs=0.05)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    lowest = min(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert lowest.SOPInstanceUID == volume.datasets[volume.frames[0].dataset].SOPInstanceUID
    reference = pydicom.dcmread(real_ct() / Path(lowest.filename).name)
    expected = reference.pixel_array.astype(np.int32) * int(reference.RescaleSlope) + int(
        reference.RescaleIntercept
    )
    assert np.array_equal(_array(image)[0], expected)
    assert "PixelData" not in volume.datasets[0]  # dropped once decoded


def _array(image: object) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)  # type: ignore[arg-type]


def test_slices_are_sorted_by_position_not_instance_number(phantom_slices: list[Dataset]) -> None:
    numbers = [int(ds.InstanceNumber) for ds in phantom_slices]
    assert numbers != sorted(numbers)  # the InstanceNumbers really are shuffled
    shuffled = fresh(phantom_slices)
    np.random.default_rng(1).shuffle(shuffled)  # type: ignore[arg-type]
    volume = build_volume(shuffled, SETTINGS)
    z = [volume.frames[k].position[2] for k in range(len(volume.frames))]
    assert z == sorted(z)
    assert volume.image.GetOrigin()[2] == pytest.approx(-150.0)
    expected = chest_phantom(size=32, slices=16, involvement=0.3).hu
    assert np.array_equal(_array(volume.image), expected)
    assert _array(volume.image).dtype == np.int16


def test_compressed_rle_slices_decode(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    for ds in datasets:
        ds.compress(RLELossless)
    volume = build_volume(datasets, SETTINGS)
    expected = chest_phantom(size=32, slices=16, involvement=0.3).hu
    assert np.array_equal(_array(volume.image), expected)


def test_float_rescale_gives_float_hu(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    for ds in datasets:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
    volume = build_volume(datasets, SETTINGS)
    assert _array(volume.image).dtype == np.float32


def test_enhanced_multiframe_ct() -> None:
    phantom = chest_phantom(size=32, slices=16, involvement=0.3)
    ds = enhanced_ct(phantom.hu, reverse=True)
    volume = build_volume([ds], SETTINGS)
    assert volume.image.GetSize() == (32, 32, 16)
    assert volume.image.GetSpacing()[2] == pytest.approx(5.0)
    assert np.array_equal(_array(volume.image), phantom.hu)
    assert [f.frame for f in volume.frames] == list(range(15, -1, -1))


def enhanced_ct(hu: np.ndarray, reverse: bool = False) -> Dataset:
    """An Enhanced CT Image object of ``hu`` (frames in reverse z order if asked)."""
    template = phantom_series(chest_phantom(size=hu.shape[1], slices=2))[0]
    ds = Dataset()
    ds.file_meta = copy.deepcopy(template.file_meta)
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyTime",
        "Modality",
        "FrameOfReferenceUID",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
    ):
        setattr(ds, keyword, getattr(template, keyword))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PixelRepresentation = 1
    order = list(range(hu.shape[0]))[::-1] if reverse else list(range(hu.shape[0]))
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures, orientation, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = template.PixelSpacing, 5.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    x0, y0 = template.ImagePositionPatient[:2]
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [x0, y0, -150.0 + k * 5.0]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.ascontiguousarray(hu[order]).astype(np.int16).tobytes()
    return ds


# ---------------------------------------------------------------- refusals


def test_refuses_a_gap(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    sorted_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    datasets.remove(sorted_z[8])
    datasets.remove(sorted_z[9])
    error = refused(datasets)
    assert error.reason is RefusalReason.MISSING_SLICES
    assert "about 2 slice(s) missing" in str(error)


def test_refuses_duplicate_positions(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    twin = copy.deepcopy(datasets[3])
    twin.SOPInstanceUID = generate_uid()
    assert refused([*datasets, twin]).reason is RefusalReason.DUPLICATE_SLICES


def test_refuses_non_uniform_spacing(phantom_slices: list[Dataset]) -> None:
    datasets = sorted(fresh(phantom_slices), key=lambda ds: float(ds.ImagePositionPatient[2]))
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient[2] = -150.0 + k * 5.0 + (1.0 if k % 2 else 0.0)
    assert refused(datasets).reason is RefusalReason.NON_UNIFORM_SPACING
    loose = SETTINGS.model_copy(update={"inference_slice_spacing_tolerance": 0.5})
    assert build_volume(datasets, loose).image.GetSize()[2] == 16


def test_refuses_gantry_tilt(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    for ds in datasets:  # each slice shifted in y as z grows: a 15 degree tilt
        z = float(ds.ImagePositionPatient[2]) + 150.0
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + z * np.tan(np.radians(15))
    error = refused(datasets)
    assert error.reason is RefusalReason.GANTRY_TILT
    assert "15.00 degrees" in str(error)


def test_refuses_mixed_orientations(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    datasets[5].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert refused(datasets).reason is RefusalReason.MIXED_ORIENTATION


def test_refuses_a_localizer(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    datasets[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert refused(datasets).reason is RefusalReason.LOCALIZER


def test_refuses_too_few_slices(phantom_slices: list[Dataset]) -> None:
    error = refused(fresh(phantom_slices)[:5])
    assert error.reason is RefusalReason.TOO_FEW_SLICES
    assert "5 slices, at least 10" in str(error)


def test_refuses_non_ct(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    datasets[2].Modality = "MR"
    assert refused(datasets).reason is RefusalReason.NOT_CT


def test_refuses_inconsistent_matrix(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    datasets[4].Rows = 16
    assert refused(datasets).reason is RefusalReason.INCONSISTENT_MATRIX
    datasets = fresh(phantom_slices)
    datasets[4].PixelSpacing = [1.5, 1.5]
    assert refused(datasets).reason is RefusalReason.INCONSISTENT_MATRIX


def test_refuses_missing_geometry_and_empty(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    del datasets[1].ImagePositionPatient
    assert refused(datasets).reason is RefusalReason.MISSING_GEOMETRY
    assert refused([]).reason is RefusalReason.EMPTY


def test_refuses_undecodable_pixel_data(phantom_slices: list[Dataset]) -> None:
    datasets = fresh(phantom_slices)
    datasets[3].PixelData = b"\x00" * 10  # truncated
    assert refused(datasets).reason is RefusalReason.UNDECODABLE


def test_enhanced_ct_localizer_frame_is_refused() -> None:
    ds = enhanced_ct(chest_phantom(size=32, slices=12).hu)
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    ds.PerFrameFunctionalGroupsSequence[3].CTImageFrameTypeSequence = [frame_type]
    assert refused([ds]).reason is RefusalReason.LOCALIZER
