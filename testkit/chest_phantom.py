"""Synthetic chest CT phantoms with known lungs, vessels and involvement, for tests and bench.

A phantom is an axial volume in HU (int16, z-y-x) with: air outside, a soft-tissue body
ellipse, two lung ellipsoids (right lung on the image left, as in radiological display:
patient right = -x in LPS) whose apex and base lie inside the scan, thin vessels running
along z, and a lesion region occupying a chosen share of the lung parenchyma (the
dependent, posterior part: ground glass above, consolidation below), plus optional
emphysema (bullae below -950 HU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from testkit.dicom_factory import ct_slice

GGO_HU, CONSOLIDATION_HU, LUNG_HU, TISSUE_HU, VESSEL_HU = -550, -20, -860, 40, 60
DENSE_CONSOLIDATION_HU = 35  # the density lung-seg 1.1.1 leaves outside the lung mask
LUNG_HALF_LENGTH = 0.92  # of the scan's half length: apex and base lie inside the scan


@dataclass
class Phantom:
    """A phantom volume and its truth (labels: 1 right lung, 2 left lung)."""

    hu: np.ndarray  # (z, y, x) int16
    lungs: np.ndarray  # (z, y, x) uint8
    spacing: tuple[float, float, float]  # (x, y, z) mm
    involvement_percent: float  # lesion share of the parenchyma (lung minus vessels)
    emphysema_percent: float  # bullae share of the lung


def chest_phantom(
    size: int = 128,
    slices: int = 60,
    involvement: float = 0.0,
    emphysema: float = 0.0,
    spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    consolidation: float = 0.5,
) -> Phantom:
    """A chest phantom with ``involvement`` (0..1) of the parenchyma affected, the cranial
    ``1 - consolidation`` of the lesion slices ground glass, the rest consolidation.

    Built slice by slice, so a 512 x 512 x 300 phantom needs little more than its own arrays.
    """
    rng = np.random.default_rng(seed)
    pixel = 350.0 / size
    spacing = spacing or (pixel, pixel, 300.0 / slices)
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    body = (x / 0.95) ** 2 + (y / 0.7) ** 2 <= 1
    vessels = np.zeros((size, size), dtype=bool)
    for vx, vy in rng.uniform(-0.6, 0.6, (24, 2)):
        vessels |= ((x - vx) ** 2 + (y - vy * 0.7) ** 2) <= (0.9 * 2 / size) ** 2
    lungs = np.zeros((slices, size, size), dtype=np.uint8)
    for k, z in enumerate((np.arange(slices) + 0.5) / slices * 2 - 1):
        for label, centre in ((1, -0.42), (2, 0.42)):
            inside = ((x - centre) / 0.33) ** 2 + (y / 0.5) ** 2 + (z / LUNG_HALF_LENGTH) ** 2 <= 1
            lungs[k][inside] = label
    # lesions fill the posterior (largest y) share of the parenchyma, bullae the anterior one
    parenchyma_rows = np.count_nonzero((lungs > 0) & ~vessels, axis=(0, 2))  # voxels per row
    lesion_rows = _rows_for_share(parenchyma_rows, involvement, from_end=True)
    bullae_rows = _rows_for_share(parenchyma_rows, emphysema, from_end=False)
    hu = np.empty((slices, size, size), dtype=np.int16)
    lesion_count = bullae_count = 0
    first_dense = round(slices * (1 - consolidation))
    for k in range(slices):
        plane = np.where(body, TISSUE_HU, -1000).astype(np.int16)
        lung = lungs[k] > 0
        plane[lung] = LUNG_HU
        plane[lung & vessels] = VESSEL_HU
        lesion = lung & lesion_rows[:, np.newaxis]
        plane[lesion] = GGO_HU if k < first_dense else CONSOLIDATION_HU
        bullae = lung & ~vessels & bullae_rows[:, np.newaxis]
        plane[bullae] = -990
        lesion_count += int(np.count_nonzero(lesion & ~vessels))
        bullae_count += int(np.count_nonzero(bullae))
        noise = rng.normal(0, 12, plane.shape).astype(np.int16)
        hu[k] = np.where(body, plane + noise, plane)
    lung_voxels = int(np.count_nonzero(lungs))
    parenchyma_voxels = int(parenchyma_rows.sum())
    return Phantom(
        hu=hu,
        lungs=lungs,
        spacing=spacing,
        involvement_percent=100.0 * lesion_count / parenchyma_voxels,
        emphysema_percent=100.0 * bullae_count / lung_voxels,
    )


def dense_lung_base(phantom: Phantom, label: int, share: float) -> tuple[Phantom, np.ndarray]:
    """The phantom with the caudal ``share`` of one lung's voxels (``label``: 1 right, 2 left)
    turned into consolidation at +35 HU (truth labels unchanged), and the lung mask without
    them: what lung-seg 1.1.1 returns for dense disease (models/lung-seg/MODEL_CARD.md).
    The phantom must have no lesion or bullae: its involvement becomes the dense share of the
    lungs."""
    if phantom.involvement_percent or phantom.emphysema_percent:
        raise ValueError("dense_lung_base needs a phantom without lesions or bullae")
    lung = phantom.lungs == label
    per_slice = np.count_nonzero(lung, axis=(1, 2))  # slices run from the feet up
    slices = np.cumsum(per_slice) - per_slice / 2 < share * per_slice.sum()
    dense = lung & slices[:, np.newaxis, np.newaxis]
    noise = np.random.default_rng(0).normal(0, 12, int(dense.sum()))
    hu = phantom.hu.copy()
    hu[dense] = np.round(DENSE_CONSOLIDATION_HU + noise).astype(np.int16)
    mask = np.where(dense, 0, phantom.lungs).astype(np.uint8)
    involvement = 100.0 * np.count_nonzero(dense) / np.count_nonzero(phantom.lungs)
    return Phantom(hu, phantom.lungs, phantom.spacing, involvement, 0.0), mask


def _rows_for_share(per_row: np.ndarray, share: float, from_end: bool) -> np.ndarray:
    """Rows (y) holding about ``share`` of the voxels, taken from the last or the first row."""
    rows = np.zeros(per_row.shape, dtype=bool)
    if share <= 0:
        return rows
    order = np.arange(per_row.size)[::-1] if from_end else np.arange(per_row.size)
    cumulative = np.cumsum(per_row[order])
    taken = order[cumulative - per_row[order] / 2 < share * per_row.sum()]
    rows[taken] = True
    return rows


def phantom_series(
    phantom: Phantom,
    study_uid: str | None = None,
    shuffle_seed: int | None = None,
    patient_id: str = "PHANTOM-1",
) -> list[Dataset]:
    """The phantom as a CT series (stored values = HU + 1024, intercept -1024).

    With ``shuffle_seed`` the InstanceNumbers are a random permutation of the slice order.
    """
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    slices, rows, columns = phantom.hu.shape
    sx, sy, sz = phantom.spacing
    numbers = np.arange(slices)
    if shuffle_seed is not None:
        numbers = np.random.default_rng(shuffle_seed).permutation(slices)
    datasets = []
    for k in range(slices):
        ds = ct_slice(
            study_uid, series_uid, k, size=rows, patient_id=patient_id, frame_uid=frame_uid
        )
        ds.SeriesDescription = "CHEST 128"
        ds.InstanceNumber = int(numbers[k]) + 1
        ds.ImagePositionPatient = [-0.5 * columns * sx, -0.5 * rows * sy, -150.0 + k * sz]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.RescaleIntercept = -1024
        ds.PixelRepresentation = 0
        ds.PixelData = (phantom.hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets
