"""DICOM JSON (PS3.18 F.2): how one attribute and one object are written, for every writer
(instance metadata documents, QIDO-RS results, WADO-RS fallbacks)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def element(vr: str, values: Sequence[Any]) -> dict[str, Any]:
    """One attribute: ``{"vr": ..., "Value": [...]}``, or only the VR when it has no value
    (PS3.18 F.2.5: an empty attribute has no ``Value``)."""
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def dumps(body: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII characters kept as they are."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
