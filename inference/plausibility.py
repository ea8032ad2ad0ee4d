"""Plausibility gates of the CT analysis: is this a calibrated CT with whole adult lungs?

No grade is given unless every gate passes; a failed gate is a result too (an
``Assessment`` with a ``RefusalReason`` and a detail that names no patient):

- calibration (before the lung model): the air outside the body must be within
  ``inference_air_tolerance_hu`` of ``inference_air_hu`` (-1000 HU); the air sample is the
  median of the voxels outside the body outline, or, when the field of view holds (almost)
  no air outside the body, the darkest 0.5 % of the volume. Otherwise: not assessable,
  ``miscalibrated``.
- lung found: under ``inference_lung_found_min_ml`` of lung (an abdominal CT): not
  assessable, ``no_lung``.
- coverage: along the patient's head-feet axis (whatever the series' orientation), the
  lung area in the first or last slice above ``inference_coverage_end_fraction`` of the
  largest slice's means the base or the apex lies outside the scan: ``partial_coverage``,
  lung volumes reported, no shares and no grade.
- symmetry: with whole lungs, the smaller lung's volume below
  ``inference_lung_asymmetry_min_ratio`` (0.7) of the larger's: ``lung_asymmetric``, lung
  volumes reported, no shares and no grade. The lung model leaves dense consolidation
  (soft-tissue density) outside the mask, so one-sided dense disease shrinks that lung's
  mask and would lower the involvement and the grade as the disease grows; effusion and
  collapse shrink it too. Normal adult lungs have a right/left volume ratio of about
  1.1-1.2 (smaller/larger 0.83-0.91); 0.7 allows up to 1.43 and fires when about 35-40 % of
  the right or 15-25 % of the left lung is missing from the mask (30 % of either lung of the
  symmetric phantoms). Bilateral, symmetric dense disease is not caught.
- adult range: with whole lungs, the total volume must lie in
  ``[inference_lung_volume_min_ml, inference_lung_volume_max_ml]`` (1.5-10 L: adult CT lung
  volumes span about 2.5-8 L from expiration to full inspiration, and the limits leave room
  for restrictive disease and large patients); otherwise not assessable,
  ``lung_volume_implausible``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import SimpleITK as sitk

from inference.errors import RefusalReason
from inference.segmentation import BODY_MIN_HU, body_mask
from pacs.config import Settings

PADDING_HU = -1500.0  # below: outside the reconstruction circle (padding), not air
CALIBRATION_GRID_MM = 6.0  # the calibration check runs on a grid about this coarse in-plane
CALIBRATION_SLICES = 32  # and on about this many slab averages
MIN_AIR_VOXELS = 500  # fewer outside-body voxels on that grid: use the darkest voxels instead


class Status(StrEnum):
    """How far an analysis could go (``ai_result.measurements["assessment"]``)."""

    COMPLETE = "complete"  # every gate passed: shares and grade
    # lung volumes only: part of the lungs lies outside the scan or, when the lungs are
    # asymmetric, possibly outside the lung mask (the reason says which)
    PARTIAL_COVERAGE = "partial_coverage"
    NOT_ASSESSABLE = "not_assessable"  # no measurement of the lungs


@dataclass(frozen=True, slots=True)
class Assessment:
    """The outcome of the gates: a status and, unless complete, the reason and a detail."""

    status: Status
    reason: RefusalReason | None = None
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.status is Status.COMPLETE

    def text(self) -> str:
        """``not assessable: <detail>`` (empty when complete)."""
        return "" if self.complete else f"not assessable: {self.detail}"


COMPLETE = Assessment(Status.COMPLETE)


def refused(reason: RefusalReason, detail: str) -> Assessment:
    """A not-assessable outcome."""
    return Assessment(Status.NOT_ASSESSABLE, reason, detail)


def air_hu(image: sitk.Image) -> float:
    """The HU of the air outside the body (see the module docstring)."""
    spacing, size = image.GetSpacing(), image.GetSize()
    factors = [max(1, int(CALIBRATION_GRID_MM / s)) for s in spacing[:2]]
    factors.append(max(1, size[2] // CALIBRATION_SLICES))
    grid = sitk.Cast(sitk.BinShrink(image, factors), sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(grid)
    in_view = values > PADDING_HU
    body = body_mask(grid) if np.any(values >= BODY_MIN_HU) else np.zeros(values.shape, bool)
    outside = values[in_view & ~body]
    if outside.size >= MIN_AIR_VOXELS:
        return float(np.median(outside))
    inside = values[in_view]
    if inside.size == 0:
        return float(np.min(values))
    return float(np.percentile(inside, 0.5))


def check_calibration(image: sitk.Image, settings: Settings) -> Assessment:
    """Not assessable (``miscalibrated``) unless the air reads about -1000 HU."""
    measured = air_hu(image)
    if abs(measured - settings.inference_air_hu) > settings.inference_air_tolerance_hu:
        return refused(
            RefusalReason.MISCALIBRATED,
            f"air outside the body reads {measured:.0f} HU, expected "
            f"{settings.inference_air_hu:.0f} ± {settings.inference_air_tolerance_hu:.0f} HU",
        )
    return COMPLETE


def check_lungs(lungs: sitk.Image, settings: Settings) -> Assessment:
    """The lung gates on a label image (1 right, 2 left): found, covered, symmetric, adult
    volume."""
    voxel_ml = float(np.prod(lungs.GetSpacing())) / 1000.0
    # head-feet axis first: LPS order puts inferior at index 0, superior last
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(lungs, "LPS"))
    area = np.count_nonzero(labels, axis=(1, 2))
    total_ml = float(area.sum()) * voxel_ml
    if total_ml < settings.inference_lung_found_min_ml:
        return refused(
            RefusalReason.NO_LUNG,
            f"no lungs in the scan ({total_ml:.1f} mL marked, "
            f"at least {settings.inference_lung_found_min_ml:.0f} mL expected)",
        )
    limit = settings.inference_coverage_end_fraction * float(area.max())
    missing = [
        name for name, end in (("lung base", area[0]), ("lung apex", area[-1])) if end > limit
    ]
    if missing:
        return Assessment(
            Status.PARTIAL_COVERAGE,
            RefusalReason.PARTIAL_COVERAGE,
            f"partial coverage, {' and '.join(missing)} outside the scan "
            f"({total_ml:.0f} mL of lung in it); volumes only, no grade",
        )
    asymmetric = check_symmetry(labels, voxel_ml, settings)
    if not asymmetric.complete:
        return asymmetric
    low, high = settings.inference_lung_volume_min_ml, settings.inference_lung_volume_max_ml
    if not low <= total_ml <= high:
        return refused(
            RefusalReason.LUNG_VOLUME_IMPLAUSIBLE,
            f"total lung volume {total_ml:.0f} mL outside the adult range {low:.0f}-{high:.0f} mL",
        )
    return COMPLETE


def check_symmetry(labels: np.ndarray, voxel_ml: float, settings: Settings) -> Assessment:
    """Volumes only (``lung_asymmetric``) when the smaller lung is below
    ``inference_lung_asymmetry_min_ratio`` of the larger (labels: 1 right, 2 left)."""
    right_ml = float(np.count_nonzero(labels == 1)) * voxel_ml
    left_ml = float(np.count_nonzero(labels == 2)) * voxel_ml
    larger = max(right_ml, left_ml)
    ratio = min(right_ml, left_ml) / larger if larger > 0 else 1.0
    if ratio >= settings.inference_lung_asymmetry_min_ratio:
        return COMPLETE
    return Assessment(
        Status.PARTIAL_COVERAGE,
        RefusalReason.LUNG_ASYMMETRIC,
        f"right lung {right_ml / 1000:.1f} L vs left {left_ml / 1000:.1f} L (smaller/larger "
        f"{ratio:.2f}, at least {settings.inference_lung_asymmetry_min_ratio:.2f} expected): "
        "dense disease, effusion or collapse may lie outside the lung mask; "
        "volumes only, no grade",
    )
