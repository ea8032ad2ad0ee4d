"""SMART App Launch discovery (public): ``/fhir/.well-known/smart-configuration`` and the
CapabilityStatement ``/fhir/metadata``. SMART clients read both before they authorize, so
neither takes a token; neither holds patient data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from pacs.audit.search import CAPABILITY as AUDIT_CAPABILITY
from pacs.fhir.capability import capability_statement
from pacs.security.smart import capability_security
from viewer_api.authn import public_root, smart_document
from viewer_api.deps import AuthenticatorDep, SettingsDep
from viewer_api.fhir_http import fhir_response
from viewer_api.routers.fhir import operations

router = APIRouter(tags=["fhir"])


@router.get("/fhir/.well-known/smart-configuration")
def smart_configuration(
    request: Request, settings: SettingsDep, authenticator: AuthenticatorDep
) -> dict[str, Any]:
    """Where SMART clients authorize and get tokens, the scopes and capabilities."""
    return smart_document(request, settings, authenticator)


@router.get("/fhir/metadata")
async def metadata(
    request: Request, settings: SettingsDep, authenticator: AuthenticatorDep
) -> Response:
    """The CapabilityStatement, generated from what the server implements; its security
    element names the SMART endpoints."""
    smart = await run_in_threadpool(smart_document, request, settings, authenticator)
    base = f"{public_root(request, settings)}/fhir"
    security = capability_security(smart)
    return fhir_response(capability_statement(base, operations(), security, [AUDIT_CAPABILITY]))
