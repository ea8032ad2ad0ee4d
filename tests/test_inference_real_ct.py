"""The lung model and the quantification on the real CT of ../shared/data (issue 10, part 3).

``example_ct_sm.nii.gz`` (TotalSegmentator example: lung bases and upper abdomen, 3 mm, no
pneumonia) with its reference lungs (labels 10, 11 left; 13, 14 right):

- per-side Dice of the shipped model with the segmenter's post-processing;
- the share of lung called involved on this normal CT;
- dense lesions (+35 HU) in the right lung, which the model leaves outside the mask: no
  grade, from the coverage gate (this CT holds the lung bases only, so the asymmetry gate,
  which needs whole lungs, does not apply here);
- lesions inserted into the right lung (its posterior, dependent 10 / 30 / 50 %, ground glass
  at -600 HU laid over the parenchyma: vessels denser than the lesion stay): inside the
  mask, measured involvement within 5 points of the inserted share of both lungs, grades
  in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference.errors import RefusalReason
from inference.plausibility import check_lungs
from inference.quantify import GRADES, Bands, quantify
from inference.registry import ModelRegistry
from inference.segmentation import LEFT_LUNG, RIGHT_LUNG, LungSegmenter
from pacs.config import Settings
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "totalsegmentator"
REAL_CT, REAL_SEG = DATA / "example_ct_sm.nii.gz", DATA / "example_seg.nii.gz"
RIGHT_LOBES, LEFT_LOBES = (13, 14), (10, 11)


@pytest.fixture(scope="module")
def real_ct() -> tuple[sitk.Image, np.ndarray]:
    require(REAL_CT.exists() and REAL_SEG.exists(), "shared test data is missing")
    return sitk.ReadImage(str(REAL_CT)), sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_SEG)))


@pytest.fixture(scope="module")
def lung_seg() -> LungSegmenter:
    return LungSegmenter(ModelRegistry(ROOT / "models", threads=2))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_per_side_dice(real_ct: tuple[sitk.Image, np.ndarray], lung_seg: LungSegmenter) -> None:
    """Issue 10: left 0.80 (the thin lung round the left dome was missed); target both
    sides >= 0.92 and both lungs >= 0.93, with no mediastinum or aorta in the lungs."""
    ct, ref = real_ct
    got = sitk.GetArrayFromImage(lung_seg.segment(ct))
    assert dice(got == RIGHT_LUNG, np.isin(ref, RIGHT_LOBES)) >= 0.92
    assert dice(got == LEFT_LUNG, np.isin(ref, LEFT_LOBES)) >= 0.92
    assert dice(got > 0, np.isin(ref, RIGHT_LOBES + LEFT_LOBES)) >= 0.93
    aorta, vena_cava = ref == 52, ref == 63
    assert np.count_nonzero((got > 0) & (aorta | vena_cava)) == 0


def test_normal_real_ct_is_not_called_involved(
    real_ct: tuple[sitk.Image, np.ndarray], lung_seg: LungSegmenter
) -> None:
    """Issue 10: the ground-glass band called a normal real slice CT-4; this CT of normal
    lung bases was 38.9 % involved (CT-2)."""
    ct, _ = real_ct
    result = quantify(ct, lung_seg.segment(ct), Bands())
    assert result.involvement_percent < 5.0
    assert result.ct_severity_grade in ("CT-0", "CT-1")


def inserted(
    ct: sitk.Image, ref: np.ndarray, share: float, hu: float
) -> tuple[sitk.Image, np.ndarray]:
    """``ct`` with the posterior ``share`` of the right lung's voxels raised to ``hu`` (plus
    15 HU noise; denser voxels keep their value) and the lesion mask."""
    right = np.isin(ref, RIGHT_LOBES)
    z, y, x = np.nonzero(right)
    order = np.argsort(y, kind="stable")  # y index grows anteriorly here (RAS file)
    take = order[: int(share * right.sum())]
    lesion = np.zeros(right.shape, bool)
    lesion[z[take], y[take], x[take]] = True
    values = sitk.GetArrayFromImage(ct)
    noise = np.random.default_rng(round(share * 100)).normal(0, 15, int(lesion.sum()))
    values[lesion] = np.maximum(values[lesion], np.round(hu + noise).astype(values.dtype))
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(ct)
    return image, lesion


def test_inserted_ground_glass_is_inside_and_measured(
    real_ct: tuple[sitk.Image, np.ndarray], lung_seg: LungSegmenter
) -> None:
    ct, ref = real_ct
    lungs = np.count_nonzero(np.isin(ref, RIGHT_LOBES + LEFT_LOBES))
    grades = []
    for share in (0.1, 0.3, 0.5):
        image, lesion = inserted(ct, ref, share, -600.0)
        labels = lung_seg.segment(image)
        inside = sitk.GetArrayViewFromImage(labels)[lesion] > 0
        assert inside.mean() >= 0.95, share
        result = quantify(image, labels, Bands())
        expected = 100.0 * lesion.sum() / lungs
        assert result.involvement_percent == pytest.approx(expected, abs=5), share
        grades.append(GRADES.index(result.ct_severity_grade))
    assert grades == sorted(grades) and grades[-1] > grades[0]


def test_inserted_dense_consolidation_gets_no_grade(
    real_ct: tuple[sitk.Image, np.ndarray], lung_seg: LungSegmenter
) -> None:
    """+35 HU consolidation falls out of the mask (model card: 26 / 15 / 2 % inside), so its
    grade would be falsely low; the gates withhold it. On this partial CT the coverage gate
    does; the asymmetry gate (whole lungs only) is never reached: smaller/larger is 0.57
    for the normal bases here (left 43 mL, right 75 mL) and rises to 0.85 as the dense right
    lesion grows."""
    ct, ref = real_ct
    for share in (0.1, 0.3, 0.5):
        image, _ = inserted(ct, ref, share, 35.0)
        assessment = check_lungs(lung_seg.segment(image), Settings())
        assert assessment.reason is RefusalReason.PARTIAL_COVERAGE, (share, assessment)
        assert "volumes only, no grade" in assessment.detail
