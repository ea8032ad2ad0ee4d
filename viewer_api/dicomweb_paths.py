"""The resource a DICOMweb path names (PS3.18 10.3): every study, one study, one series or
one instance. One dependency per path shape, so one endpoint serves each shape."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Request

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


def dicomweb_base(request: Request, public_base_url: str | None) -> str:
    """The absolute DICOMweb root (``.../dicomweb``) for URLs in responses (RetrieveURL,
    BulkDataURI): ``PACS_PUBLIC_BASE_URL`` when set, else the request's own URL.

    dicomweb-client sends ``Host`` without the port; when that host is the address this
    server listens on (or ``localhost`` and a loopback address), the port the request
    reached is put back. Behind a proxy, set ``PACS_PUBLIC_BASE_URL``.
    """
    if public_base_url:
        return public_base_url.rstrip("/") + "/dicomweb"
    url = request.base_url
    address, port = request.scope.get("server") or (None, None)
    default = {"http": 80, "https": 443}.get(url.scheme)
    if url.port is None and port not in (None, 0, default) and _same_host(url.hostname, address):
        url = url.replace(port=int(port))
    return str(url).rstrip("/") + "/dicomweb"


def _same_host(hostname: str | None, address: object) -> bool:
    if hostname == address:
        return True
    try:
        return hostname == "localhost" and ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False
