"""The FastAPI application of the archive."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from pacs import __version__
from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.runtime import build_ingest
from pacs.storage import open_store
from viewer_api.routers import aes, dicomweb_stow, health, studies, ui


def create_app(settings: Settings, dicom_server: Any = None) -> FastAPI:
    """Build the app on the configured index and store; ``dicom_server`` (if this process
    runs one) is reported by ``/health``."""
    app = FastAPI(
        title="Regional imaging archive",
        version=__version__,
        description="DICOM archive with an AI service for CT: API, DICOMweb and FHIR.",
    )
    engine = create_index_engine(settings)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.store = open_store(settings)
    # STOW-RS ingest has its own engine: its connections commit in group-commit mode
    app.state.ingest = build_ingest(settings, store=app.state.store)
    app.state.dicom_server = dicom_server
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(aes.router)
    app.include_router(ui.router)
    app.include_router(dicomweb_stow.router)
    return app
