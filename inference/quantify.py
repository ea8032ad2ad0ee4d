"""Lung quantification: volumes, emphysema index, ground-glass and consolidation shares, grade.

Method (every number comes from ``Bands``, i.e. the settings ``PACS_INFERENCE_*``):

- lung = the segmentation's labels 1 (right) and 2 (left); volumes = voxel count x voxel volume.
- emphysema index (LAA-950) = % of lung voxels below ``emphysema_hu``.
- the partial-volume rim of the lung (``lung_rim_mm``, at least one voxel in-plane), where
  chest wall, diaphragm and mediastinum average with air into ground-glass values, is not
  classed by its own density: each rim voxel takes the majority class of the inner lung
  next to it (repeated inwards ``RIM_STEPS`` times); unreached rim voxels are left out.
  With less than a tenth of the lung inner, the whole lung is classed by density.
- vessels: lung voxels at or above ``ggo_max_hu`` (dense) that a morphological opening with an
  in-plane square about ``vessel_max_diameter_mm`` wide (at least 3 voxels) removes, i.e. thin
  (tubular in cross-section) dense structures; blobs that survive the opening are
  consolidation. Vessels, a rim of ``vessel_halo_mm`` (in whole voxels, at least one) around
  them (partial volume looks like ground glass) and voxels denser than
  ``consolidation_max_hu`` are not parenchyma. The same opening of the voxels at or above the
  ground-glass lower bound keeps only patches: thinner spots are vessels smaller than a
  voxel, counted as normal lung.
- the ground-glass lower bound follows the patient's own normal lung: the mode of the inner
  lung's histogram below ``ggo_min_hu`` plus ``ggo_normal_margin_hu``, kept within
  ``[ggo_min_hu, ggo_min_limit_hu]`` (dependent lung and low inspiration raise a normal lung's
  density; a lung with no normal part keeps ``ggo_min_limit_hu``).
- ground-glass = parenchyma in ``[ggo lower bound, ggo_max_hu)``, consolidation = parenchyma in
  ``[ggo_max_hu, consolidation_max_hu]``; both as % of the parenchyma.
- involvement = ground-glass % + consolidation %; the CT grade is CT-0 below ``grade_bounds[0]``,
  then CT-1 ``[b0, b1)``, CT-2 ``[b1, b2)``, CT-3 ``[b2, b3)``, CT-4 ``>= b3``.

Only the bounding box of the lungs is processed; masks are uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from inference.errors import InferenceError
from pacs.config import Settings

RIGHT_LUNG, LEFT_LUNG = 1, 2  # labels of the lung segmentation
GROUND_GLASS, CONSOLIDATION = 1, 2  # labels of ``Quantification.findings``
RIM_STEPS = 8  # in-plane voxel steps a rim voxel's class is taken from the inner lung
GRADES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


@dataclass(frozen=True, slots=True)
class Bands:
    """The thresholds of the quantification (HU, mm, %)."""

    emphysema_hu: float = -950.0
    ggo_min_hu: float = -750.0
    ggo_max_hu: float = -300.0
    consolidation_max_hu: float = 100.0
    vessel_max_diameter_mm: float = 5.0
    vessel_halo_mm: float = 1.0
    grade_bounds: tuple[float, float, float, float] = (0.5, 25.0, 50.0, 75.0)
    ggo_normal_margin_hu: float = 200.0
    ggo_min_limit_hu: float = -650.0
    lung_rim_mm: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Bands:
        """The bands configured in ``settings``."""
        return cls(
            emphysema_hu=settings.inference_emphysema_threshold_hu,
            ggo_min_hu=settings.inference_ggo_min_hu,
            ggo_max_hu=settings.inference_ggo_max_hu,
            consolidation_max_hu=settings.inference_consolidation_max_hu,
            vessel_max_diameter_mm=settings.inference_vessel_max_diameter_mm,
            vessel_halo_mm=settings.inference_vessel_halo_mm,
            grade_bounds=settings.ct_grade_bounds,
            ggo_normal_margin_hu=settings.inference_ggo_normal_margin_hu,
            ggo_min_limit_hu=settings.inference_ggo_min_limit_hu,
            lung_rim_mm=settings.inference_lung_rim_mm,
        )


@dataclass
class Quantification:
    """Measurements of one chest CT and the finding masks behind them.

    ``findings`` is a (z, y, x) uint8 array of the whole volume: 1 ground-glass,
    2 consolidation, 0 elsewhere.
    """

    right_lung_volume_ml: float
    left_lung_volume_ml: float
    emphysema_index_percent: float
    ground_glass_percent: float
    consolidation_percent: float
    involvement_percent: float
    ct_severity_grade: str
    findings: np.ndarray

    def measurements(self) -> dict[str, Any]:
        """The measurements under the names of the ``ai_result`` contract."""
        return {
            "right_lung_volume_ml": round(float(self.right_lung_volume_ml), 1),
            "left_lung_volume_ml": round(float(self.left_lung_volume_ml), 1),
            "emphysema_index_percent": round(float(self.emphysema_index_percent), 2),
            "ground_glass_percent": round(float(self.ground_glass_percent), 2),
            "consolidation_percent": round(float(self.consolidation_percent), 2),
            "involvement_percent": round(float(self.involvement_percent), 2),
            "ct_severity_grade": self.ct_severity_grade,
        }


def severity_grade(involvement_percent: float, bounds: tuple[float, float, float, float]) -> str:
    """CT-0..CT-4 of an involvement percentage (each bound starts the next grade)."""
    return GRADES[sum(involvement_percent >= bound for bound in bounds)]


def quantify(hu: sitk.Image, lungs: sitk.Image, bands: Bands) -> Quantification:
    """Measure a CT volume (HU) with its lung segmentation (1 right, 2 left)."""
    if hu.GetSize() != lungs.GetSize():
        raise InferenceError(f"segmentation size {lungs.GetSize()} != volume {hu.GetSize()}")
    labels = sitk.GetArrayViewFromImage(lungs)
    values = sitk.GetArrayViewFromImage(hu)
    findings = np.zeros(labels.shape, dtype=np.uint8)
    voxel_ml = float(np.prod(hu.GetSpacing())) / 1000.0
    box = _bounding_box(labels)
    if box is None:
        raise InferenceError("the lung segmentation is empty")
    labels, values = labels[box], values[box]
    lung = labels > 0
    right = int(np.count_nonzero(labels == RIGHT_LUNG))
    left = int(np.count_nonzero(labels == LEFT_LUNG))
    lung_voxels = right + left
    emphysema = int(np.count_nonzero(lung & (values < bands.emphysema_hu)))

    spacing = hu.GetSpacing()
    inner = _inner(lung, bands.lung_rim_mm, spacing)
    ggo_min = ggo_lower_bound(values[inner & (values <= bands.consolidation_max_hu)], bands)
    dense = lung & (values >= bands.ggo_max_hu)
    blobs = _opening(dense, bands.vessel_max_diameter_mm, spacing)
    vessels = dense & ~blobs
    if vessels.any():
        halo = [max(1, round(bands.vessel_halo_mm / s)) for s in spacing[:2]]
        vessels = _dilate(vessels, halo) & ~blobs
    tissue = lung & ~vessels & (values <= bands.consolidation_max_hu)
    # vessels thinner than a voxel read as ground glass: raised spots narrower than a vessel
    # stay in the parenchyma, as normal lung
    raised = tissue & (values >= ggo_min)
    patches = raised & _opening(raised, bands.vessel_max_diameter_mm, spacing)
    core = tissue & inner
    ggo = core & patches & (values < bands.ggo_max_hu)
    consolidation = core & patches & (values >= bands.ggo_max_hu)
    parenchyma, ggo, consolidation = _classify_rim(tissue & ~inner, core, ggo, consolidation)
    parenchyma_voxels = max(1, int(np.count_nonzero(parenchyma)))
    ggo_percent = 100.0 * np.count_nonzero(ggo) / parenchyma_voxels
    consolidation_percent = 100.0 * np.count_nonzero(consolidation) / parenchyma_voxels
    cropped = findings[box]
    cropped[ggo] = GROUND_GLASS
    cropped[consolidation] = CONSOLIDATION
    involvement = ggo_percent + consolidation_percent
    return Quantification(
        right_lung_volume_ml=right * voxel_ml,
        left_lung_volume_ml=left * voxel_ml,
        emphysema_index_percent=100.0 * emphysema / lung_voxels,
        ground_glass_percent=ggo_percent,
        consolidation_percent=consolidation_percent,
        involvement_percent=involvement,
        ct_severity_grade=severity_grade(involvement, bands.grade_bounds),
        findings=findings,
    )


def ggo_lower_bound(parenchyma_hu: np.ndarray, bands: Bands) -> float:
    """The ground-glass lower bound of one patient: the mode of the normal-looking parenchyma
    (below ``ggo_min_hu``, 10 HU bins) plus ``ggo_normal_margin_hu``, clipped to
    ``[ggo_min_hu, ggo_min_limit_hu]``; ``ggo_min_limit_hu`` when under a tenth of the
    parenchyma looks normal."""
    normal = parenchyma_hu[parenchyma_hu < bands.ggo_min_hu]
    if normal.size < 0.1 * parenchyma_hu.size or normal.size == 0:
        return bands.ggo_min_limit_hu
    edges = np.arange(-1024.0, bands.ggo_min_hu + 10.0, 10.0)
    counts, _ = np.histogram(normal, bins=edges)
    mode = float(edges[int(np.argmax(counts))] + 5.0)
    bound = mode + bands.ggo_normal_margin_hu
    return float(np.clip(bound, bands.ggo_min_hu, bands.ggo_min_limit_hu))


def _classify_rim(
    rim: np.ndarray, core: np.ndarray, ggo: np.ndarray, consolidation: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parenchyma, ground glass and consolidation with each rim voxel given the majority class
    of the classified voxels next to it (3 x 3 in-plane), repeated inwards from the inner lung
    up to ``RIM_STEPS`` times; rim voxels still unreached are left out. Works on the rim's
    coordinates only (the rim is a surface: few voxels of the box)."""
    known, ggo, consolidation = core.copy(), ggo.copy(), consolidation.copy()
    pending = np.argwhere(rim)
    _, rows, columns = rim.shape
    for _ in range(RIM_STEPS):
        if not len(pending):
            break
        z, y, x = pending.T
        counts = np.zeros((3, len(z)), dtype=np.int16)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < columns)
                yy, xx = np.clip(yy, 0, rows - 1), np.clip(xx, 0, columns - 1)
                for i, mask in enumerate((known, ggo, consolidation)):
                    counts[i] += mask[z, yy, xx] & inside
        near_known, near_ggo, near_cons = counts
        reached = near_known > 0
        if not reached.any():
            break
        involved = reached & (2 * (near_ggo + near_cons) > near_known)
        as_ggo = involved & (near_ggo >= near_cons)
        as_cons = involved & (near_cons > near_ggo)
        ggo[z[as_ggo], y[as_ggo], x[as_ggo]] = True
        consolidation[z[as_cons], y[as_cons], x[as_cons]] = True
        known[z[reached], y[reached], x[reached]] = True
        pending = pending[~reached]
    return known, ggo, consolidation


def _inner(lung: np.ndarray, rim_mm: float, spacing: Any) -> np.ndarray:
    """The lung without its edge rim (``rim_mm`` in-plane, at least one voxel); the whole lung
    when less than a tenth of it is inner."""
    radius = [max(1, round(rim_mm / s)) for s in spacing[:2]]
    inner = _erode(lung, radius)
    return inner if np.count_nonzero(inner) >= 0.1 * np.count_nonzero(lung) else lung


def _bounding_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest (z, y, x) box holding every non-zero label (two passes over the volume)."""
    plane = labels.max(axis=0)  # (y, x)
    per_slice = labels.max(axis=(1, 2))  # (z,)
    hits = [np.flatnonzero(per_slice), np.flatnonzero(plane.any(axis=1))]
    hits.append(np.flatnonzero(plane.any(axis=0)))
    if hits[0].size == 0:
        return None
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)


def _opening(mask: np.ndarray, diameter_mm: float, spacing: Any) -> np.ndarray:
    """Binary opening of ``mask`` with an in-plane square about ``diameter_mm`` wide (at least
    3 voxels): what survives is at least that wide in both in-plane directions."""
    radius = [max(1, round((diameter_mm / s - 1) / 2)) for s in spacing[:2]]
    return _dilate(_erode(mask, radius), radius)


def _shifted(mask: np.ndarray, axis: int, step: int, fill: bool) -> np.ndarray:
    """``mask`` moved by ``step`` voxels along ``axis``, ``fill`` shifted in."""
    out = np.full(mask.shape, fill, dtype=bool)
    source = [slice(None)] * mask.ndim
    target = [slice(None)] * mask.ndim
    if step > 0:
        source[axis], target[axis] = slice(None, -step), slice(step, None)
    else:
        source[axis], target[axis] = slice(-step, None), slice(None, step)
    out[tuple(target)] = mask[tuple(source)]
    return out


def _erode(mask: np.ndarray, radius: list[int]) -> np.ndarray:
    """Erosion by a (2 ry + 1) x (2 rx + 1) in-plane square (separable: rows, then columns)."""
    return _square_filter(mask, radius, np.bitwise_and)


def _dilate(mask: np.ndarray, radius: list[int]) -> np.ndarray:
    """Dilation by a (2 ry + 1) x (2 rx + 1) in-plane square (separable)."""
    return _square_filter(mask, radius, np.bitwise_or)


def _square_filter(mask: np.ndarray, radius: list[int], combine: np.ufunc) -> np.ndarray:
    """``combine`` each voxel with its in-plane neighbours up to ``radius`` (x, y) away, rows
    then columns; outside the volume counts as False."""
    out = mask
    for axis, r in ((mask.ndim - 1, radius[0]), (mask.ndim - 2, radius[1])):
        result = out.copy()
        for step in range(1, r + 1):
            combine(result, _shifted(out, axis, step, False), out=result)
            combine(result, _shifted(out, axis, -step, False), out=result)
        out = result
    return out
