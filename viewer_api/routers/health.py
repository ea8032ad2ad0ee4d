"""Liveness (``/health/live``), readiness (``/health/ready``, ``/health``) and Prometheus
metrics (``/metrics``). Public: no ``CurrentUser`` (see ``viewer_api.app.PUBLIC_ROUTERS``)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from pacs.readiness import OK, readiness
from viewer_api.deps import DicomReadyDep, EngineDep, StoreDep

router = APIRouter(tags=["operations"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """200 while the process answers HTTP (the Kubernetes liveness probe): nothing else is
    checked, so a slow database never gets a healthy process restarted."""
    return {"status": "ok"}


@router.get("/health/ready")
def ready(engine: EngineDep, store: StoreDep, dicom: DicomReadyDep) -> JSONResponse:
    """200 when the database, the object store and (if in this process) the DICOM port take
    traffic (the Kubernetes readiness probe). 503 otherwise, with each check's state and an
    overall status: ``starting`` while the only missing parts are still starting,
    ``unavailable`` when a check failed (``pacs.readiness``)."""
    body = readiness(engine, store, dicom)
    return JSONResponse(body, status_code=200 if body["status"] == OK else 503)


@router.get("/health")
def health(engine: EngineDep, store: StoreDep, dicom: DicomReadyDep) -> JSONResponse:
    """The same answer as ``/health/ready`` (kept for existing probes and the Dockerfile)."""
    return ready(engine, store, dicom)


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
