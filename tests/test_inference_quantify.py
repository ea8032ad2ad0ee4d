"""Quantification on phantoms with known involvement, emphysema and vessels; CT grades."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from inference.errors import InferenceError
from inference.quantify import (
    CONSOLIDATION,
    GROUND_GLASS,
    Bands,
    _erode,
    ggo_lower_bound,
    quantify,
    severity_grade,
)
from pacs.config import Settings
from testkit.chest_phantom import LUNG_HU, chest_phantom


def images(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, ...]
) -> tuple[sitk.Image, sitk.Image]:
    hu_image, lung_image = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(lungs)
    hu_image.SetSpacing(spacing)
    lung_image.SetSpacing(spacing)
    return hu_image, lung_image


@pytest.mark.parametrize(
    ("share", "grade"),
    [(0.0, "CT-0"), (0.10, "CT-1"), (0.30, "CT-2"), (0.60, "CT-3"), (0.85, "CT-4")],
)
def test_phantom_involvement_and_grade(share: float, grade: str) -> None:
    phantom = chest_phantom(size=128, slices=48, involvement=share, seed=3)
    assert phantom.involvement_percent == pytest.approx(100 * share, abs=1.5)
    result = quantify(*images(phantom.hu, phantom.lungs, phantom.spacing), Bands())
    assert result.involvement_percent == pytest.approx(100 * share, abs=5)
    assert result.ct_severity_grade == grade
    if share:  # the phantom's lesions are half ground glass, half consolidation
        assert result.ground_glass_percent == pytest.approx(50 * share, abs=5)
        assert result.consolidation_percent == pytest.approx(50 * share, abs=5)
    voxel_ml = float(np.prod(phantom.spacing)) / 1000
    assert result.right_lung_volume_ml == pytest.approx(np.sum(phantom.lungs == 1) * voxel_ml)
    assert result.left_lung_volume_ml == pytest.approx(np.sum(phantom.lungs == 2) * voxel_ml)
    assert result.findings.shape == phantom.hu.shape
    assert np.count_nonzero(result.findings[phantom.lungs == 0]) == 0
    assert set(result.measurements()) == {
        "right_lung_volume_ml",
        "left_lung_volume_ml",
        "emphysema_index_percent",
        "ground_glass_percent",
        "consolidation_percent",
        "involvement_percent",
        "ct_severity_grade",
    }


def test_vessels_are_not_consolidation() -> None:
    phantom = chest_phantom(size=128, slices=48, seed=5)
    vessels = (phantom.lungs > 0) & (phantom.hu > -300)
    assert np.count_nonzero(vessels) > 500  # the phantom really has dense vessels in the lungs
    result = quantify(*images(phantom.hu, phantom.lungs, phantom.spacing), Bands())
    assert result.consolidation_percent < 0.1
    assert result.ground_glass_percent < 0.1
    # without the vessel filter the dense vessels would count as consolidation
    assert 100 * np.count_nonzero(vessels) / np.count_nonzero(phantom.lungs) > 0.5


def test_emphysema_index() -> None:
    phantom = chest_phantom(size=96, slices=40, emphysema=0.12, seed=2)
    result = quantify(*images(phantom.hu, phantom.lungs, phantom.spacing), Bands())
    assert 8 < phantom.emphysema_percent < 16
    assert result.emphysema_index_percent == pytest.approx(phantom.emphysema_percent, abs=0.5)
    assert result.involvement_percent < 0.5


def test_findings_masks_match_the_bands() -> None:
    """Inner lung voxels are classed by their density; rim voxels (partial volume with the
    chest wall) take the class of the inner lung next to them."""
    phantom = chest_phantom(size=64, slices=32, involvement=0.4, seed=4)
    result = quantify(*images(phantom.hu, phantom.lungs, phantom.spacing), Bands())
    inner = _erode(phantom.lungs > 0, [1, 1])
    ggo, consolidation = result.findings == GROUND_GLASS, result.findings == CONSOLIDATION
    assert np.all(phantom.hu[ggo & inner] < -300)
    assert np.all(phantom.hu[ggo & inner] >= -750)
    assert np.all(phantom.hu[consolidation & inner] >= -300)
    rim_findings = (ggo | consolidation) & ~inner
    assert rim_findings.any()  # the lesion reaches the chest wall
    assert np.mean(phantom.hu[rim_findings] >= -750) > 0.9


def partial_volume_phantom(lung_hu: float, involvement: float = 0.0) -> tuple[np.ndarray, ...]:
    """A chest phantom rendered at twice the resolution and area-averaged 2 x 2 in-plane, as
    a scanner's voxels average what they hold: vessels and lung edges get partial-volume rims.
    Returns HU, lungs (a voxel is lung when most of it is) and the spacing."""
    fine = chest_phantom(size=192, slices=24, involvement=involvement, seed=6)
    hu = fine.hu.astype(np.float32)
    hu[(fine.lungs > 0) & (np.abs(hu - LUNG_HU) < 60)] = lung_hu  # uniform, noise-free lung
    coarse = hu.reshape(24, 96, 2, 96, 2).mean(axis=(2, 4)).astype(np.int16)
    lungs = fine.lungs.reshape(24, 96, 2, 96, 2).astype(np.float32).mean(axis=(2, 4))
    labels = np.where(lungs > 0.5, fine.lungs[:, ::2, ::2], 0).astype(np.uint8)
    spacing = (fine.spacing[0] * 2, fine.spacing[1] * 2, fine.spacing[2])
    return coarse, labels, spacing


def test_healthy_uniform_lung_with_partial_volume_rims_is_ct0() -> None:
    """Issue 10: uniform -850 HU lungs were CT-1 from the rims around vessels."""
    hu, lungs, spacing = partial_volume_phantom(-850.0)
    rims = (lungs > 0) & (hu >= -750) & (hu < -300)
    assert np.count_nonzero(rims) > 0.005 * np.count_nonzero(lungs)  # the rims are there
    result = quantify(*images(hu, lungs, spacing), Bands())
    assert result.involvement_percent < 0.5
    assert result.ct_severity_grade == "CT-0"


def test_ground_glass_floor_follows_the_patients_normal_lung() -> None:
    bands = Bands()
    dense_normal = np.random.default_rng(1).normal(-810, 30, 10_000)
    assert ggo_lower_bound(dense_normal, bands) == bands.ggo_min_limit_hu  # -610 -> -650
    inflated = np.random.default_rng(1).normal(-900, 25, 10_000)
    assert ggo_lower_bound(inflated, bands) == pytest.approx(-700, abs=10)
    all_ground_glass = np.random.default_rng(1).normal(-550, 30, 10_000)
    assert ggo_lower_bound(all_ground_glass, bands) == bands.ggo_min_limit_hu
    # a diffuse ground-glass lung is still graded by its density
    hu, lungs, spacing = partial_volume_phantom(-550.0)
    result = quantify(*images(hu, lungs, spacing), Bands())
    assert result.involvement_percent > 90
    assert result.ct_severity_grade == "CT-4"


def test_bands_come_from_settings() -> None:
    settings = Settings.model_validate(
        {
            "inference_ggo_min_hu": -700,
            "inference_ct2_min_percent": 20,
            "inference_ct1_min_percent": 1,
        }
    )
    bands = Bands.from_settings(settings)
    assert bands.ggo_min_hu == -700
    assert bands.grade_bounds == (1, 20, 50, 75)
    assert severity_grade(22, bands.grade_bounds) == "CT-2"
    assert severity_grade(22, Bands().grade_bounds) == "CT-1"


@pytest.mark.parametrize(
    ("percent", "grade"),
    [
        (0.0, "CT-0"),
        (0.49, "CT-0"),
        (0.5, "CT-1"),
        (24.99, "CT-1"),
        (25, "CT-2"),
        (49.9, "CT-2"),
        (50, "CT-3"),
        (74.9, "CT-3"),
        (75, "CT-4"),
        (100, "CT-4"),
    ],
)
def test_grade_boundaries(percent: float, grade: str) -> None:
    assert severity_grade(percent, Bands().grade_bounds) == grade


def test_empty_or_mismatched_segmentation_is_an_error() -> None:
    phantom = chest_phantom(size=32, slices=12)
    hu, _ = images(phantom.hu, phantom.lungs, phantom.spacing)
    with pytest.raises(InferenceError, match="empty"):
        quantify(hu, sitk.Image(hu.GetSize(), sitk.sitkUInt8), Bands())
    with pytest.raises(InferenceError, match="size"):
        quantify(hu, sitk.Image((8, 8, 8), sitk.sitkUInt8), Bands())
