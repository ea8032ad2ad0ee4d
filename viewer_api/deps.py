"""FastAPI dependencies: the app's services (built once by ``viewer_api.app.create_app``), a
database session per request, the current user (the one auth seam) and the audit trail.

Routers take these ``Annotated`` aliases and nothing from ``app.state`` themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pacs.config import Settings
from pacs.fhir.store import FhirStore
from pacs.ingest import IngestService
from pacs.jobs.rules import RuleBook
from pacs.security.authn import SESSION_COOKIE, Authenticator
from pacs.security.policy import with_settings
from pacs.security.subject import Subject
from pacs.storage.base import ObjectStore
from viewer_api.audit import AuditTrail

_BEARER = HTTPBearer(
    auto_error=False,
    description="A token of `pacs token`, `POST /login/token` or (PACS_AUTH=oidc) the issuer.",
)
"""Declares the bearer scheme in the OpenAPI document (the "Authorize" button of /docs); the
header itself is read by ``get_current_user``."""


def get_current_user(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> Subject:
    """The caller: a bearer token (the archive's own or, with ``PACS_AUTH=oidc``, the
    issuer's) or the ``pacs_session`` cookie of the web login (``pacs.security.authn``).
    Raises ``NotAuthenticated`` (401 with ``WWW-Authenticate: Bearer``; a login redirect on
    web pages, see ``viewer_api.authn``) or ``IdentityProviderUnavailable`` (503)."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.authenticate(
        request.headers.get("authorization"),
        request.cookies.get(SESSION_COOKIE),
        request.client.host if request.client else "",
    )


def _app_state(name: str) -> Callable[[Request], Any]:
    """A dependency answering ``app.state.<name>``, a service ``create_app`` built once."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    return dependency


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request."""
    with request.app.state.sessions() as session:
        yield session


get_settings: Callable[[Request], Settings] = _app_state("settings")
get_engine: Callable[[Request], Engine] = _app_state("engine")  # for services' own connections
get_store: Callable[[Request], ObjectStore] = _app_state("store")  # the DICOM objects
get_ingest: Callable[[Request], IngestService] = _app_state("ingest")  # as C-STORE; blocks
get_fhir_store: Callable[[Request], FhirStore] = _app_state("fhir_store")
get_rule_book: Callable[[Request], RuleBook] = _app_state("rules")  # PACS_RULES_FILE
get_authenticator: Callable[[Request], Authenticator] = _app_state("authenticator")


def get_dicom_ready(request: Request) -> bool | None:
    """Whether this process's DICOM server takes associations; None when it runs none."""
    server = request.app.state.dicom_server
    return None if server is None else bool(server.ready)


CurrentUser = Annotated[Subject, Depends(get_current_user)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
FhirStoreDep = Annotated[FhirStore, Depends(get_fhir_store)]
RuleBookDep = Annotated[RuleBook, Depends(get_rule_book)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
DicomReadyDep = Annotated[bool | None, Depends(get_dicom_ready)]


BREAK_GLASS_HEADER = "X-Break-Glass-Reason"
"""A clinician opens a patient outside the access policy by stating the reason here."""


def get_subject(request: Request, user: CurrentUser, settings: SettingsDep) -> Subject:
    """The caller as the access policy sees it (``pacs.security.policy.with_settings``): the
    organisations a radiologist reads for, a clinician's break-glass reason."""
    reason = request.headers.get(BREAK_GLASS_HEADER, "")
    return with_settings(user, settings.radiologist_reads_for, reason)


SubjectDep = Annotated[Subject, Depends(get_subject)]


def get_audit(request: Request, session: SessionDep, subject: SubjectDep) -> AuditTrail:
    """The audit trail of this request, as ``subject`` (break-glass flagged)."""
    return AuditTrail(session, request, subject)


AuditDep = Annotated[AuditTrail, Depends(get_audit)]
"""Every route that touches the index takes this: it authenticates the caller
(``CurrentUser``) and records the access (``audit(action, status)``)."""
