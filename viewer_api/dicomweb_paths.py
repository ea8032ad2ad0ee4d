"""The resource a DICOMweb path names (PS3.18 10.3): every study, one study, one series or
one instance. One dependency per path shape, so one endpoint serves each shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Path

StudyUID = Annotated[str, Path(description="Study Instance UID")]
SeriesUID = Annotated[str, Path(description="Series Instance UID")]
InstanceUID = Annotated[str, Path(description="SOP Instance UID")]


@dataclass(frozen=True, slots=True)
class Target:
    """The UIDs of a path, outermost first; None below the level the path names."""

    study: str | None = None
    series: str | None = None
    instance: str | None = None

    def keys(self) -> dict[str, str]:
        """The path's UIDs as matching keys (``StudyInstanceUID``, ...) of a query."""
        named = {
            "StudyInstanceUID": self.study,
            "SeriesInstanceUID": self.series,
            "SOPInstanceUID": self.instance,
        }
        return {key: uid for key, uid in named.items() if uid is not None}


def everything() -> Target:
    """``/studies``, ``/series``, ``/instances``: no UID in the path."""
    return Target()


def one_study(study: StudyUID) -> Target:
    """``/studies/{study}...``."""
    return Target(study)


def one_series(study: StudyUID, series: SeriesUID) -> Target:
    """``/studies/{study}/series/{series}...``."""
    return Target(study, series)


def one_instance(study: StudyUID, series: SeriesUID, instance: InstanceUID) -> Target:
    """``/studies/{study}/series/{series}/instances/{instance}...``."""
    return Target(study, series, instance)
