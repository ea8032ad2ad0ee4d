"""``/fhir/.well-known/smart-configuration``: SMART App Launch discovery (public)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from viewer_api.authn import smart_document
from viewer_api.deps import AuthenticatorDep, SettingsDep

router = APIRouter(tags=["fhir"])


@router.get("/fhir/.well-known/smart-configuration")
def smart_configuration(
    request: Request, settings: SettingsDep, authenticator: AuthenticatorDep
) -> dict[str, Any]:
    """Where SMART clients authorize and get tokens, the scopes and capabilities."""
    return smart_document(request, settings, authenticator)
