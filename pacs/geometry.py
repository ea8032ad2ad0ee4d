"""Geometry of image planes in the patient coordinate system (PS3.3 C.7.6.2.1.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def slice_normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    """The unit normal of an image plane: the cross product of the row and column direction
    cosines of ImageOrientationPatient (six values). Raise ``ValueError`` for another count
    or parallel (or zero) directions."""
    if len(orientation) != 6:
        raise ValueError(f"ImageOrientationPatient has {len(orientation)} values, not 6")
    rx, ry, rz, cx, cy, cz = (float(v) for v in orientation)
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(n * n for n in normal))
    if not length > 0:
        raise ValueError("ImageOrientationPatient's row and column directions are parallel")
    return (normal[0] / length, normal[1] / length, normal[2] / length)
