"""Series -> volume: stored CT objects to one SimpleITK image in Hounsfield units (LPS).

``read_series`` fetches a series' objects from the object store (keys from the index),
``build_volume`` checks their geometry and decodes them. Slices are ordered by their position
along the slice normal (the cross product of the ImageOrientationPatient row and column
cosines), never by InstanceNumber. Single-frame CT and enhanced multi-frame CT (functional
groups) are both frames here. A series that cannot be a trustworthy volume is refused with
``VolumeRefusedError`` and a ``RefusalReason`` code.

Memory: the stored int16 values become HU in an int16 array when the rescale keeps integers
in range (the usual case: slope 1, integer intercept); float32 only otherwise. Each object's
pixel data is dropped once decoded, so the peak is about the encoded series plus the volume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import Engine, select

from inference.errors import RefusalReason, VolumeRefusedError
from pacs.config import Settings
from pacs.geometry import slice_normal
from pacs.index.models import Instance, Series
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)

CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage})
_DUPLICATE_MM = 1e-3  # slices closer than this along the normal are at the same position


@dataclass(frozen=True, slots=True)
class Frame:
    """One image plane: where it is and how to turn its stored values into HU."""

    dataset: int  # index into ``Volume.datasets``
    frame: int  # frame index within that dataset (0 for single-frame objects)
    position: tuple[float, float, float]  # ImagePositionPatient (mm, LPS)
    orientation: tuple[float, ...]  # ImageOrientationPatient (6 direction cosines)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    rows: int
    columns: int
    slope: float
    intercept: float


@dataclass
class Volume:
    """A CT volume in HU and the source objects it came from (pixel data dropped).

    ``frames`` lists the source plane of each z index of ``image`` in slice order.
    """

    image: sitk.Image
    datasets: list[Dataset]
    frames: list[Frame]
    study_instance_uid: str
    series_instance_uid: str


def read_series(engine: Engine, store: ObjectStore, series_instance_uid: str) -> list[Dataset]:
    """Every stored object of a series, parsed (pixel data still encoded)."""
    with engine.connect() as conn:
        keys = conn.scalars(
            select(Instance.object_key)
            .join(Series, Series.pk == Instance.series_pk)
            .where(Series.series_instance_uid == series_instance_uid)
            .order_by(Instance.pk)
        ).all()
    if not keys:
        raise VolumeRefusedError(RefusalReason.EMPTY, "no stored instance in the series")
    return [dcmread(BytesIO(store.get(key))) for key in keys]


def build_volume(datasets: list[Dataset], settings: Settings) -> Volume:
    """Check, sort and decode the objects of one series into a volume in HU."""
    if not datasets:
        raise VolumeRefusedError(RefusalReason.EMPTY, "no object in the series")
    frames: list[Frame] = []
    for index, ds in enumerate(datasets):
        _check_object(ds)
        frames.extend(_frames(index, ds))
    _check_identity(datasets)
    _check_matrix(frames)
    _check_orientation(frames, settings.inference_orientation_tolerance)
    if len(frames) < settings.inference_min_slices:
        raise VolumeRefusedError(
            RefusalReason.TOO_FEW_SLICES,
            f"{len(frames)} slices, at least {settings.inference_min_slices} needed",
        )
    normal = np.array(slice_normal(frames[0].orientation))
    frames.sort(key=lambda f: float(np.dot(f.position, normal)))
    step = _check_spacing(frames, normal, settings)
    _check_tilt(frames, normal, settings.inference_max_gantry_tilt_degrees)
    pixels = _decode(datasets, frames)
    image = sitk.GetImageFromArray(pixels)
    del pixels
    row_spacing, column_spacing = frames[0].pixel_spacing
    image.SetSpacing((column_spacing, row_spacing, step))
    image.SetOrigin(frames[0].position)
    row, column = np.array(frames[0].orientation[:3]), np.array(frames[0].orientation[3:])
    image.SetDirection(tuple(np.column_stack([row, column, normal]).ravel().tolist()))
    first = datasets[0]
    return Volume(
        image=image,
        datasets=datasets,
        frames=frames,
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
    )


# ---------------------------------------------------------------- per object


def _check_object(ds: Dataset) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", ""))
    if modality != "CT" or sop_class not in CT_SOP_CLASSES:
        raise VolumeRefusedError(
            RefusalReason.NOT_CT, f"modality {modality!r}, SOP class {sop_class!r}"
        )
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise VolumeRefusedError(
            RefusalReason.LOCALIZER, f"instance {ds.get('InstanceNumber')} is a localizer"
        )
    if "PixelData" not in ds:
        raise VolumeRefusedError(RefusalReason.UNDECODABLE, "an object has no pixel data")


_IDENTITY = (
    (RefusalReason.MIXED_PATIENT, ("PatientID", "IssuerOfPatientID"), "patients"),
    (RefusalReason.MIXED_STUDY, ("StudyInstanceUID",), "studies"),
    (RefusalReason.MIXED_SERIES, ("SeriesInstanceUID",), "series"),
    (RefusalReason.MIXED_FRAME_OF_REFERENCE, ("FrameOfReferenceUID",), "frames of reference"),
)


def _check_identity(datasets: list[Dataset]) -> None:
    """One patient, study, series and Frame of Reference in the whole volume (values are
    counted, never logged or echoed: they may identify the patient)."""
    for reason, keywords, what in _IDENTITY:
        values = {tuple(str(ds.get(k, "") or "") for k in keywords) for ds in datasets}
        if len(values) > 1:
            raise VolumeRefusedError(reason, f"the series mixes {len(values)} {what}")


def _item(ds: Dataset, sequence: str) -> Dataset | None:
    value = ds.get(sequence)
    return value[0] if value else None


def _functional(per_frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group macro's item from the per-frame group, else from the shared one."""
    for group in (per_frame, shared):
        if group is not None and (item := _item(group, sequence)) is not None:
            return item
    return None


def _frames(index: int, ds: Dataset) -> list[Frame]:
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [_frame(index, 0, ds, ds, ds, ds)]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for number, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame_type = _functional(per_frame, shared, "CTImageFrameTypeSequence")
        if frame_type is not None and "LOCALIZER" in [str(v) for v in frame_type.FrameType]:
            raise VolumeRefusedError(RefusalReason.LOCALIZER, f"frame {number + 1} is a localizer")
        frames.append(
            _frame(
                index,
                number,
                ds,
                _functional(per_frame, shared, "PlanePositionSequence"),
                _functional(per_frame, shared, "PlaneOrientationSequence"),
                _functional(per_frame, shared, "PixelMeasuresSequence"),
                _functional(per_frame, shared, "PixelValueTransformationSequence") or ds,
            )
        )
    return frames


def _frame(
    index: int,
    number: int,
    ds: Dataset,
    position: Dataset | None,
    orientation: Dataset | None,
    measures: Dataset | None,
    transform: Dataset | None = None,
) -> Frame:
    transform = transform if transform is not None else ds
    try:
        ipp = _floats(position, "ImagePositionPatient", 3)
        iop = _floats(orientation, "ImageOrientationPatient", 6)
        spacing = _floats(measures, "PixelSpacing", 2)
    except ValueError as exc:
        raise VolumeRefusedError(RefusalReason.MISSING_GEOMETRY, str(exc)) from None
    return Frame(
        dataset=index,
        frame=number,
        position=(ipp[0], ipp[1], ipp[2]),
        orientation=tuple(iop),
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=float(transform.get("RescaleSlope", 1) or 1),
        intercept=float(transform.get("RescaleIntercept", 0) or 0),
    )


def _floats(ds: Dataset | None, keyword: str, count: int) -> list[float]:
    value: Any = ds.get(keyword) if ds is not None else None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{keyword} is missing or not {count} numbers")
    return numbers


# ---------------------------------------------------------------- geometry checks


def _check_matrix(frames: list[Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise VolumeRefusedError(
                RefusalReason.INCONSISTENT_MATRIX,
                f"{frame.rows}x{frame.columns} and {first.rows}x{first.columns} slices",
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise VolumeRefusedError(
                RefusalReason.INCONSISTENT_MATRIX,
                f"pixel spacing {frame.pixel_spacing} and {first.pixel_spacing}",
            )


def _check_orientation(frames: list[Frame], tolerance: float) -> None:
    first = np.array(frames[0].orientation)
    row, column = first[:3], first[3:]
    if not (
        math.isclose(np.linalg.norm(row), 1, abs_tol=1e-2)
        and math.isclose(np.linalg.norm(column), 1, abs_tol=1e-2)
        and abs(float(np.dot(row, column))) < 1e-2
    ):
        raise VolumeRefusedError(
            RefusalReason.MISSING_GEOMETRY, "ImageOrientationPatient is not two unit vectors"
        )
    for frame in frames[1:]:
        if float(np.max(np.abs(np.array(frame.orientation) - first))) > tolerance:
            raise VolumeRefusedError(
                RefusalReason.MIXED_ORIENTATION,
                f"orientations {frame.orientation} and {frames[0].orientation}",
            )


def _check_spacing(frames: list[Frame], normal: np.ndarray, settings: Settings) -> float:
    """The slice step (mm) after refusing duplicates, gaps and non-uniform steps."""
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    steps = np.diff(distances)
    if (same := np.flatnonzero(steps < _DUPLICATE_MM)).size:
        at = distances[same[0]]
        raise VolumeRefusedError(
            RefusalReason.DUPLICATE_SLICES,
            f"{same.size} slice(s) share a position with another (first at {at:.2f} mm)",
        )
    median = float(np.median(steps))
    tolerance = settings.inference_slice_spacing_tolerance
    gaps = np.flatnonzero(steps >= 1.5 * median)
    if gaps.size:
        missing = round(float(np.sum(steps[gaps]) / median)) - gaps.size
        raise VolumeRefusedError(
            RefusalReason.MISSING_SLICES,
            f"about {missing} slice(s) missing after {distances[gaps[0]]:.2f} mm "
            f"(step {steps[gaps[0]]:.2f} mm, usual {median:.2f} mm)",
        )
    deviation = float(np.max(np.abs(steps - median)) / median)
    if deviation > tolerance:
        raise VolumeRefusedError(
            RefusalReason.NON_UNIFORM_SPACING,
            f"slice steps {steps.min():.3f}..{steps.max():.3f} mm deviate {deviation:.1%} "
            f"from {median:.3f} mm (tolerance {tolerance:.1%})",
        )
    return float(np.mean(steps))


def _check_tilt(frames: list[Frame], normal: np.ndarray, max_degrees: float) -> None:
    travel = np.array(frames[-1].position) - np.array(frames[0].position)
    cosine = abs(float(np.dot(travel, normal))) / float(np.linalg.norm(travel))
    angle = math.degrees(math.acos(min(1.0, cosine)))
    if angle > max_degrees:
        raise VolumeRefusedError(
            RefusalReason.GANTRY_TILT,
            f"slices advance {angle:.2f} degrees off the slice normal (limit {max_degrees})",
        )


# ---------------------------------------------------------------- pixel data


def _is_native(ds: Dataset) -> bool:
    """Uncompressed little endian 16-bit grey pixels: read without pydicom's pixel handlers."""
    return (
        ds.file_meta.get("TransferSyntaxUID") in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        and ds.get("BitsAllocated") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and ds.get("BitsStored") == 16
        and "PixelData" in ds
    )


def _native(ds: Dataset, frames: int) -> np.ndarray:
    """The stored values of a native 16-bit object as (frames, rows, columns)."""
    dtype = np.int16 if ds.PixelRepresentation == 1 else np.uint16
    shape = (int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns))
    return np.frombuffer(ds.PixelData, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _decode(datasets: list[Dataset], frames: list[Frame]) -> np.ndarray:
    """Decode every frame into its z slot, in HU; int16 unless the rescale needs floats."""
    integral = all(
        f.slope == 1 and f.intercept == int(f.intercept) and abs(f.intercept) <= 4096
        for f in frames
    )
    dtype = np.int16 if integral else np.float32
    first = frames[0]
    pixels = np.empty((len(frames), first.rows, first.columns), dtype=dtype)
    slots: dict[int, list[tuple[int, Frame]]] = {}
    for z, frame in enumerate(frames):
        slots.setdefault(frame.dataset, []).append((z, frame))
    for index, placed in slots.items():
        ds = datasets[index]
        try:
            stored = _native(ds, len(placed)) if _is_native(ds) else ds.pixel_array
        except Exception as exc:  # a codec missing or corrupt data: one reason for all
            syntax = ds.file_meta.get("TransferSyntaxUID", "?")
            raise VolumeRefusedError(
                RefusalReason.UNDECODABLE, f"transfer syntax {syntax}: {type(exc).__name__}"
            ) from None
        if stored.ndim == 2:
            stored = stored[np.newaxis]
        for z, frame in placed:
            plane = stored[frame.frame]
            if integral:
                hu = plane.astype(np.int32) + int(frame.intercept)
                pixels[z] = np.clip(hu, -32768, 32767)
            else:
                pixels[z] = plane.astype(np.float32) * frame.slope + frame.intercept
        del stored
        del ds.PixelData  # the volume holds the values now
    return pixels
