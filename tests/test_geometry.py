"""The one image-plane normal (pacs.geometry) used by the lifecycle's routing and the CT
volume builder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pacs.geometry import slice_normal
from pacs.jobs.lifecycle import orientation


def test_axis_aligned_planes() -> None:
    assert slice_normal([1, 0, 0, 0, 1, 0]) == (0.0, 0.0, 1.0)  # axial
    assert slice_normal([1, 0, 0, 0, 0, -1]) == (0.0, 1.0, 0.0)  # coronal
    assert slice_normal([0, 1, 0, 0, 0, -1]) == (-1.0, 0.0, 0.0)  # sagittal


def test_oblique_plane_matches_numpy() -> None:
    a = math.radians(20)
    iop = [1, 0, 0, 0, math.cos(a), -math.sin(a)]
    expected = np.cross(iop[:3], iop[3:])
    assert np.allclose(slice_normal(iop), expected / np.linalg.norm(expected), atol=1e-15)
    assert orientation("\\".join(map(str, iop)), "") == "AXIAL"  # within 30 degrees
    b = math.radians(40)
    assert orientation(f"1\\0\\0\\0\\{math.cos(b)}\\{-math.sin(b)}", "") == "OBLIQUE"


@pytest.mark.parametrize("iop", [[1, 0, 0], [1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
def test_refuses_what_has_no_normal(iop: list[float]) -> None:
    with pytest.raises(ValueError, match="ImageOrientationPatient"):
        slice_normal(iop)
    if len(iop) == 6:
        assert orientation("\\".join(map(str, iop)), "AXIAL") == "OBLIQUE"
