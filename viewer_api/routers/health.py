"""Liveness (``/health/live``), readiness (``/health/ready``, ``/health``) and Prometheus
metrics (``/metrics``)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

router = APIRouter(tags=["operations"])


STARTING = "starting"
"""A check that is not ready yet but on its way (the DICOM workers loading): retry."""


@router.get("/health/live")
def live() -> dict[str, str]:
    """200 while the process answers HTTP (the Kubernetes liveness probe): nothing else is
    checked, so a slow database never gets a healthy process restarted."""
    return {"status": "ok"}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    """200 when the database, the object store and (if in this process) the DICOM port take
    traffic (the Kubernetes readiness probe). 503 otherwise, with each check's state and an
    overall status: ``starting`` while the only missing parts are still starting,
    ``unavailable`` when a check failed."""
    checks: dict[str, Any] = {}
    state = request.app.state
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        state.store.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc}"
    dicom = state.dicom_server
    if dicom is not None:
        checks["dicom"] = "ok" if dicom.ready else STARTING
    failing = {value for value in checks.values() if value != "ok"}
    status = "ok" if not failing else STARTING if failing == {STARTING} else "unavailable"
    return JSONResponse({"status": status, **checks}, status_code=200 if status == "ok" else 503)


@router.get("/health")
def health(request: Request) -> JSONResponse:
    """The same answer as ``/health/ready`` (kept for existing probes and the Dockerfile)."""
    return ready(request)


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition, aggregated over every process of this node."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest(REGISTRY)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
