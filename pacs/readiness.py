"""Readiness of this node: the index answers, the object store answers, the DICOM port (if
this process runs one) takes associations."""

from __future__ import annotations

from sqlalchemy import Engine, text

from pacs.storage.base import ObjectStore

OK = "ok"
STARTING = "starting"
"""A check that is not ready yet but on its way (the DICOM workers loading): retry."""
UNAVAILABLE = "unavailable"


def check_index(engine: Engine) -> str:
    """``ok``, or ``error: <exception type>`` when the index does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return OK


def check_store(store: ObjectStore) -> str:
    """``ok``, or ``error: <reason>`` when the object store does not answer."""
    try:
        store.check()
    except Exception as exc:
        return f"error: {exc}"
    return OK


def readiness(engine: Engine, store: ObjectStore, dicom_ready: bool | None) -> dict[str, str]:
    """Each check's state and the overall ``status``: ``ok``; ``starting`` while the only
    missing parts are still starting; ``unavailable`` when a check failed. ``dicom_ready``
    is None when this process runs no DICOM server."""
    checks = {"database": check_index(engine), "storage": check_store(store)}
    if dicom_ready is not None:
        checks["dicom"] = OK if dicom_ready else STARTING
    failing = {value for value in checks.values() if value != OK}
    status = OK if not failing else STARTING if failing == {STARTING} else UNAVAILABLE
    return {"status": status, **checks}
