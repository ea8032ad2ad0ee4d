"""Lung segmentation with a registered ONNX model: pre_process -> predict -> post_process.

- ``pre_process``: reorient the CT to LPS, resample it to the manifest's grid (area-averaged
  when shrinking, then linear), apply the manifest's intensity transform, pad or crop slices
  to the size the network takes.
- ``predict``: onnxruntime over batches of slices (``context_slices`` neighbours each side as
  channels); memory holds one batch of network input plus one probability volume on the
  model grid.
- ``post_process``: probability threshold inside the body outline, connected components
  (those of at least ``min_component_fraction`` of the largest one are kept), split into
  right (1) and left (2) lung by patient side (LPS: the right lung has the smaller x), each
  side grown into the aerated tissue next to it when the manifest asks (``grow_aerated_mm``:
  the thin lung slivers of the costophrenic recesses that the network misses; never into
  air, bowel gas, vessels or the mediastinum, which lie outside the aerated band), then back
  onto the input geometry
  (probability resampled linearly and thresholded, so the mask is smooth on a finer input
  grid).

``segment(volume)`` runs the three; the result is a uint8 SimpleITK image with the input's
size, origin, spacing and direction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from inference.errors import InferenceError
from inference.registry import Manifest, ModelRegistry

logger = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2
BODY_MIN_HU = -500.0
BODY_OPENING_MM = 3.0
AERATED_HU = (-990.0, -500.0)  # lung tissue the segmentation grows into (air and gas below)
_SIDE_CODES = {"3341006": RIGHT_LUNG, "44029006": LEFT_LUNG}


class SegmentationError(InferenceError):
    """A volume the segmenter cannot process."""


@dataclass
class Prepared:
    """The volume on the model grid, ready for the network."""

    reference: sitk.Image  # the input volume (geometry of the result)
    grid: sitk.Image  # HU on the model grid (LPS, manifest spacing), float32
    body: np.ndarray  # [z, y, x] bool: inside the body outline, on the model grid
    slices: np.ndarray  # [z, H, W] float32, intensity-transformed, padded/cropped
    window: tuple[int, int, int, int]  # (y0, x0, height, width) of the grid inside ``slices``
    pad_value: float


class LungSegmenter:
    """A lung model from the registry; thread-safe (the session is shared, read-only)."""

    def __init__(
        self, registry: ModelRegistry, name: str = "lung-seg", version: str | None = None
    ) -> None:
        loaded = registry.load(name, version)
        self.manifest: Manifest = loaded.manifest
        self.session = loaded.session
        self._input_name = self.session.get_inputs()[0].name
        codes = {label.code.value for label in self.manifest.output.labels}
        self._sided = codes >= set(_SIDE_CODES)

    # ------------------------------------------------------------------ pre_process

    def _grid(self, canon: sitk.Image) -> sitk.Image:
        spec = self.manifest.input.spacing_mm or (None, None, None)
        spacing = [s if s else c for s, c in zip(spec, canon.GetSpacing(), strict=True)]
        if np.allclose(spacing, canon.GetSpacing(), rtol=1e-3):
            return canon
        factors = [
            min(n, max(1, int(t / c + 1e-3)))
            for t, c, n in zip(spacing, canon.GetSpacing(), canon.GetSize(), strict=True)
        ]
        source = sitk.BinShrink(canon, factors) if max(factors) > 1 else canon
        extent = [n * c for n, c in zip(canon.GetSize(), canon.GetSpacing(), strict=True)]
        size = [max(1, math.ceil(e / t - 1e-3)) for e, t in zip(extent, spacing, strict=True)]
        direction = np.array(canon.GetDirection()).reshape(3, 3)
        corner = np.array(canon.GetOrigin()) - direction @ (np.array(canon.GetSpacing()) / 2)
        origin = corner + direction @ (np.array(spacing) / 2)
        return sitk.Resample(
            source,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            origin.tolist(),
            spacing,
            canon.GetDirection(),
            self.manifest.input.pad_value_hu,
            sitk.sitkFloat32,
        )

    def pre_process(self, volume: sitk.Image) -> Prepared:
        """Resample and normalise ``volume`` (HU) as the manifest says."""
        if volume.GetDimension() != 3 or volume.GetNumberOfComponentsPerPixel() != 1:
            raise SegmentationError("expected a 3D single-component CT volume")
        spec = self.manifest.input
        # average-shrink in the stored axes first (cheap, int16), then reorient the small image
        target = spec.spacing_mm or (None, None, None)
        direction = np.abs(np.array(volume.GetDirection()).reshape(3, 3))
        factors = []
        for axis, (step, n) in enumerate(zip(volume.GetSpacing(), volume.GetSize(), strict=True)):
            want = target[int(np.argmax(direction[:, axis]))]
            factors.append(min(n, max(1, int(want / step + 1e-3))) if want else 1)
        shrunk = sitk.BinShrink(volume, factors) if max(factors) > 1 else volume
        canon = sitk.DICOMOrient(sitk.Cast(shrunk, sitk.sitkFloat32), spec.orientation)
        grid = self._grid(canon)
        body = body_mask(grid)
        # outside the body outline (table, mattress, blankets) the network sees air
        hu = np.where(body, sitk.GetArrayViewFromImage(grid), np.float32(spec.pad_value_hu))
        t = spec.intensity

        def transform(values: np.ndarray) -> np.ndarray:
            v = values + np.float32(t.offset)
            if t.clip_min is not None or t.clip_max is not None:
                v = np.clip(v, t.clip_min, t.clip_max)
            return (v * np.float32(t.scale) + np.float32(t.shift)).astype(np.float32)

        pad_value = float(transform(np.array([spec.pad_value_hu], np.float32))[0])
        z, h, w = hu.shape
        if spec.slice_size:
            out_h, out_w = spec.slice_size
        else:
            m = spec.size_multiple
            out_h, out_w = -(-h // m) * m, -(-w // m) * m
        slices = np.full((z, out_h, out_w), pad_value, np.float32)
        # centre the grid in the slice (crop symmetrically when it is larger)
        y0, x0 = (out_h - h) // 2, (out_w - w) // 2
        sy, sx = max(0, -y0), max(0, -x0)
        dy, dx = max(0, y0), max(0, x0)
        ch, cw = min(h - sy, out_h), min(w - sx, out_w)
        slices[:, dy : dy + ch, dx : dx + cw] = transform(hu[:, sy : sy + ch, sx : sx + cw])
        return Prepared(volume, grid, body, slices, (y0, x0, h, w), pad_value)

    # ------------------------------------------------------------------ predict

    def predict(self, prepared: Prepared) -> np.ndarray:
        """Probabilities [channel, z, y, x] on the model grid."""
        spec = self.manifest.input
        k = spec.context_slices
        slices = prepared.slices
        n = slices.shape[0]
        channels = len(self.manifest.output.labels)
        y0, x0, h, w = prepared.window
        out = np.zeros((channels, n, h, w), np.float32)
        # where the grid lies in the network's slice (crop), and where that lies in the grid
        sy, sx = max(0, y0), max(0, x0)
        gy, gx = max(0, -y0), max(0, -x0)
        ch, cw = min(h - gy, slices.shape[1] - sy), min(w - gx, slices.shape[2] - sx)
        for start in range(0, n, spec.batch_size):
            idx = np.arange(start, min(n, start + spec.batch_size))
            neighbours = np.clip(idx[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)
            batch = np.ascontiguousarray(slices[neighbours])  # [b, 2k+1, H, W]
            (prob,) = self.session.run(None, {self._input_name: batch})
            if self.manifest.output.activation == "none":
                prob = 1.0 / (1.0 + np.exp(-prob))
            for label in self.manifest.output.labels:
                out[label.channel, idx, gy : gy + ch, gx : gx + cw] = prob[
                    :, label.channel, sy : sy + ch, sx : sx + cw
                ]
        return out

    # ------------------------------------------------------------------ post_process

    def post_process(self, probability: np.ndarray, prepared: Prepared) -> sitk.Image:
        """Right (1) / left (2) lung labels on the input geometry."""
        thr = self.manifest.thresholds
        body = prepared.body
        lung_p = probability.max(axis=0) * body
        mask = lung_p > thr.probability
        voxel_ml = float(np.prod(prepared.grid.GetSpacing())) / 1000.0
        labels = _lung_components(
            mask,
            sitk.GetArrayViewFromImage(prepared.grid),
            fraction=thr.min_component_fraction,
            min_voxels=thr.min_component_ml / voxel_ml,
            gas_median_hu=thr.gas_median_hu,
        )
        if self._sided:
            sides = self._sides_from_channels(probability)
        else:
            sides = _split_sides(labels > 0, body)
        side = np.where(labels > 0, sides, 0).astype(np.uint8)
        if thr.grow_aerated_mm > 0:
            hu = sitk.GetArrayViewFromImage(prepared.grid)
            grown = grow_aerated(side, hu, body, prepared.grid, thr.grow_aerated_mm)
            lung_p = np.where(grown > side, np.float32(1.0), lung_p)
            side = grown
        if not side.any():
            logger.warning("no lung found in the volume")
        # back to the input grid: smooth probability inside the kept lungs, nearest side
        keep = sitk.GetArrayFromImage(
            sitk.BinaryDilate(sitk.GetImageFromArray((side > 0).astype(np.uint8)), [1, 1, 1])
        )
        p_img = sitk.GetImageFromArray((lung_p * keep).astype(np.float32))
        p_img.CopyInformation(prepared.grid)
        s_img = sitk.GetImageFromArray(side)
        s_img.CopyInformation(prepared.grid)
        s_img = sitk.GrayscaleDilate(s_img, [1, 1, 1])
        return _to_reference(p_img, s_img, prepared.reference, thr.probability)

    def _sides_from_channels(self, probability: np.ndarray) -> np.ndarray:
        by_side = {
            _SIDE_CODES[lab.code.value]: lab.channel
            for lab in self.manifest.output.labels
            if lab.code.value in _SIDE_CODES
        }
        right = probability[by_side[RIGHT_LUNG]]
        left = probability[by_side[LEFT_LUNG]]
        return np.where(right >= left, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)

    def segment(self, volume: sitk.Image) -> sitk.Image:
        """pre_process -> predict -> post_process."""
        prepared = self.pre_process(volume)
        return self.post_process(self.predict(prepared), prepared)


def _to_reference(
    probability: sitk.Image, side: sitk.Image, reference: sitk.Image, threshold: float
) -> sitk.Image:
    """Labels on the reference grid: probability resampled linearly and thresholded, side by
    nearest neighbour; only the box around the lungs is resampled (the rest is 0)."""
    out = np.zeros(reference.GetSize()[::-1], np.uint8)
    found = np.argwhere(sitk.GetArrayViewFromImage(side) > 0)
    if found.size:
        lo, hi = found.min(axis=0)[::-1] - 1.0, found.max(axis=0)[::-1] + 1.0  # x, y, z
        corners = [
            reference.TransformPhysicalPointToContinuousIndex(
                side.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
            )
            for corner in np.array(np.meshgrid(*zip(lo, hi, strict=True))).reshape(3, -1).T
        ]
        size = np.array(reference.GetSize())
        start = np.clip(np.floor(np.min(corners, axis=0)).astype(int), 0, size)
        stop = np.clip(np.ceil(np.max(corners, axis=0)).astype(int) + 1, 0, size)
        extent = [int(v) for v in stop - start]
        if min(extent) > 0:
            origin = reference.TransformIndexToPhysicalPoint([int(v) for v in start])
            geometry = (origin, reference.GetSpacing(), reference.GetDirection())
            p_box = sitk.Resample(
                probability,
                extent,
                sitk.Transform(),
                sitk.sitkLinear,
                *geometry,
                0.0,
                sitk.sitkFloat32,
            )
            s_box = sitk.Resample(
                side,
                extent,
                sitk.Transform(),
                sitk.sitkNearestNeighbor,
                *geometry,
                0,
                sitk.sitkUInt8,
            )
            box = np.where(
                sitk.GetArrayViewFromImage(p_box) > threshold, sitk.GetArrayViewFromImage(s_box), 0
            )
            (x0, y0, z0), (x1, y1, z1) = start, stop
            out[z0:z1, y0:y1, x0:x1] = box
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(reference)
    return result


def grow_aerated(
    side: np.ndarray, hu: np.ndarray, body: np.ndarray, grid: sitk.Image, distance_mm: float
) -> np.ndarray:
    """``side`` (1 right, 2 left) grown, one 3 x 3 x 3 step at a time and up to
    ``distance_mm`` (in steps of the grid's coarsest spacing), into voxels of the body in
    ``AERATED_HU`` next to it."""
    if not side.any():
        return side
    candidate = body & (hu >= AERATED_HU[0]) & (hu < AERATED_HU[1])
    steps = max(1, round(distance_mm / max(grid.GetSpacing())))
    grown = side.copy()
    for _ in range(steps):
        dilated = sitk.GetArrayFromImage(
            sitk.GrayscaleDilate(sitk.GetImageFromArray(grown), [1, 1, 1])
        )
        added = (grown == 0) & candidate & (dilated > 0)
        if not added.any():
            break
        grown[added] = dilated[added]
    return grown


def body_mask(grid: sitk.Image) -> np.ndarray:
    """Voxels inside the body outline: the largest object denser than air, after an opening
    that detaches the patient table, with its inner air (lungs, airways, bowel gas) filled
    slice by slice."""
    dense = sitk.BinaryThreshold(grid, BODY_MIN_HU, 1e9, 1, 0)
    radius = [max(1, round(BODY_OPENING_MM / s)) for s in grid.GetSpacing()[:2]] + [0]
    dense = sitk.BinaryMorphologicalOpening(dense, radius)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(dense), sortByObjectSize=True)
    body: np.ndarray = sitk.GetArrayFromImage(cc) == 1
    for z in range(body.shape[0]):
        if body[z].any():
            filled = sitk.BinaryFillhole(sitk.GetImageFromArray(body[z].astype(np.uint8)))
            body[z] = sitk.GetArrayViewFromImage(filled) > 0
    return body


def _lung_components(
    mask: np.ndarray,
    hu: np.ndarray,
    *,
    fraction: float,
    min_voxels: float,
    gas_median_hu: float | None,
) -> np.ndarray:
    """Component ids of the lung candidates kept: not gas (median HU at or above
    ``gas_median_hu``), at least ``min_voxels`` and ``fraction`` x the largest kept one."""
    if not mask.any():
        return np.zeros(mask.shape, np.uint32)
    cc = sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))),
        sortByObjectSize=True,
    )
    labels = sitk.GetArrayFromImage(cc)
    sizes = np.bincount(labels.ravel())
    candidates = [c for c in range(1, len(sizes)) if sizes[c] >= min_voxels]
    if gas_median_hu is not None:
        candidates = [c for c in candidates if np.median(hu[labels == c]) >= gas_median_hu]
    if not candidates:
        return np.zeros(mask.shape, np.uint32)
    largest = max(sizes[c] for c in candidates)
    keep = [c for c in candidates if sizes[c] >= fraction * largest]
    return np.where(np.isin(labels, keep), labels, 0).astype(np.uint32)


def _split_sides(lungs: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Right (1) / left (2) per voxel on an LPS grid (x index grows towards the patient's left).

    Each connected component lying mostly on one side of the body midline goes to that side;
    lungs joined across the midline are cut, slice by slice, at the column with the least lung
    near the midline."""
    sides = np.zeros(lungs.shape, np.uint8)
    if not lungs.any():
        return sides
    xs = np.nonzero(body)[2] if body.any() else np.nonzero(lungs)[2]
    midline = float(xs.mean())
    cc = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(lungs.astype(np.uint8)))
    )
    columns = np.arange(lungs.shape[2])
    for comp in range(1, int(cc.max()) + 1):
        voxels = cc == comp
        x = np.nonzero(voxels)[2]
        share_right = float((x < midline).mean()) if x.size else 0.0
        if share_right >= 0.9 or share_right <= 0.1:
            sides[voxels] = RIGHT_LUNG if share_right >= 0.9 else LEFT_LUNG
            continue
        near = np.abs(columns - midline) <= max(2, lungs.shape[2] // 8)
        for z in np.unique(np.nonzero(voxels)[0]):
            profile = voxels[z].sum(axis=0).astype(float)
            profile[~near] = np.inf
            cut = int(np.argmin(profile))
            sides[z][voxels[z] & (columns < cut)[None, :]] = RIGHT_LUNG
            sides[z][voxels[z] & (columns >= cut)[None, :]] = LEFT_LUNG
    return sides
