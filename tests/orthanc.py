"""Orthanc from Debian as a peer for tests and benchmarks: its temporary configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_orthanc_config(
    folder: Path, name: str, ae_title: str, dicom_port: int, http_port: int
) -> Path:
    """Write an Orthanc JSON configuration under ``folder`` and return its path.

    Storage and index live in ``folder/storage``; no plugins, no authentication, any calling
    AE may echo and store, the called AE title is not checked.
    """
    storage = folder / "storage"
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path
