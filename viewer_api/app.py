"""The FastAPI application of the archive."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from pacs import __version__
from pacs.audit import export as audit_export
from pacs.config import Settings
from pacs.emr.feed import base_url
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine, session_factory
from pacs.jobs.rules import RuleBook
from pacs.runtime import build_ingest
from pacs.security.authn import Authenticator
from pacs.storage import open_store
from viewer_api import errors
from viewer_api.access import authorize
from viewer_api.authn import add_exception_handlers
from viewer_api.body_limit import BodyLimit
from viewer_api.csrf import CSRFMiddleware
from viewer_api.routers import (
    aes,
    changes,
    dicomweb_qido,
    dicomweb_stow,
    dicomweb_wado,
    docs,
    fhir,
    fhir_audit,
    health,
    jobs,
    login,
    quarantine,
    review,
    smart,
    studies,
    ui,
    webhooks,
)
from viewer_api.security_headers import SecurityHeadersMiddleware


def create_app(settings: Settings, dicom_server: Any = None) -> FastAPI:
    """Build the app on the configured index and store; ``dicom_server`` (if this process
    runs one) is reported by ``/health``."""
    app = FastAPI(
        title="Regional imaging archive",
        version=__version__,
        description="DICOM archive with an AI service for CT: API, DICOMweb and FHIR.",
        docs_url=None,  # served by viewer_api.routers.docs with local assets
        redoc_url=None,
    )
    _build_services(app, settings, dicom_server)
    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    for router in PROTECTED_ROUTERS:  # each route's (action, resource): viewer_api.access
        app.include_router(router, dependencies=[Depends(authorize)])
    _add_middleware(app, settings)
    add_exception_handlers(app)
    errors.install(app)
    return app


PUBLIC_ROUTERS = (health.router, docs.router, login.router, smart.router)
"""The only routes without ``CurrentUser``: probes, metrics, the API docs, the login and the
SMART discovery document (no patient data)."""
PROTECTED_ROUTERS = (
    studies.router,
    aes.router,
    ui.router,
    dicomweb_stow.router,
    dicomweb_wado.router,
    dicomweb_qido.router,
    fhir_audit.router,  # before fhir.router: its /fhir/{type} would take AuditEvent
    fhir.router,
    review.router,
    jobs.router,
    quarantine.router,
    changes.router,
    webhooks.router,
)
"""Every other route: each depends on ``viewer_api.deps.CurrentUser`` (tests/test_http.py)."""


def _build_services(app: FastAPI, settings: Settings, dicom_server: Any) -> None:
    """The services routers get through ``viewer_api.deps``, built once per app."""
    engine = create_index_engine(settings)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.store = open_store(settings)
    # STOW-RS ingest has its own engine: its connections commit in group-commit mode
    app.state.ingest = build_ingest(settings, store=app.state.store)
    app.state.fhir_store = FhirStore(
        engine,
        base_url=f"{base_url(settings)}/fhir",
        default_count=settings.fhir_default_count,
        max_resources=settings.fhir_max_response_resources,
        max_bundle_entries=settings.fhir_max_bundle_entries,
    )
    app.state.rules = RuleBook(settings.rules_file)
    app.state.authenticator = Authenticator(settings, app.state.sessions)
    app.state.dicom_server = dicom_server
    audit_export.install(settings.audit_syslog_url)


GZIP_MINIMUM_SIZE = 1024
"""Responses from this size on are gzipped for clients that accept it."""
GZIP_EXCLUDED = (
    *DEFAULT_EXCLUDED_CONTENT_TYPES,
    "application/dicom",  # pixel data: little to gain, CPU to lose; WADO-RS stays fast
    "application/octet-stream",
    "multipart/related",
    "image/*",
)


BODY_LIMIT_EXEMPT = ("/fhir", "/dicomweb/studies")
"""Paths that stream their request bodies under limits of their own (FHIR, STOW-RS)."""


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """The JSON body limit, GZip for responses over ~1 KB (DICOM JSON, FHIR, HTML), CORS when
    origins are set, CSRF protection of cookie sessions, and (outermost, so every answer has
    them) the security headers."""
    app.add_middleware(BodyLimit, limit=settings.http_max_json_bytes, exempt=BODY_LIMIT_EXEMPT)
    app.add_middleware(
        GZipMiddleware, minimum_size=GZIP_MINIMUM_SIZE, exclude_content_types=GZIP_EXCLUDED
    )
    origins = list(settings.cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Warning", "Content-Location", "ETag", "Location"],
        )
    app.add_middleware(CSRFMiddleware, public_base_url=settings.public_base_url)
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
