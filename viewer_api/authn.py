"""How the HTTP layer answers authentication: 401 with ``WWW-Authenticate: Bearer`` for the
API, a redirect to ``/login`` for web pages (routes answering HTML), 503 when the OIDC issuer
cannot be reached; and the session cookie the login sets."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from pacs.config import Settings
from pacs.security.authn import SESSION_COOKIE, Authenticator
from pacs.security.errors import IdentityProviderUnavailable, NotAuthenticated
from pacs.security.smart import LOCAL_CAPABILITIES, smart_configuration

log = logging.getLogger(__name__)


def add_exception_handlers(app: FastAPI) -> None:
    """Answer the authentication errors of ``get_current_user``."""
    app.add_exception_handler(NotAuthenticated, _not_authenticated)  # type: ignore[arg-type]
    app.add_exception_handler(
        IdentityProviderUnavailable,
        _provider_unavailable,  # type: ignore[arg-type]
    )


def is_page(request: Request) -> bool:
    """Whether the matched route is a web page (its response class is HTML)."""
    response_class = getattr(request.scope.get("route"), "response_class", None)
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    return isinstance(response_class, type) and issubclass(response_class, HTMLResponse)


def _not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
    log.info("401 %s %s: %s", request.method, request.url.path, exc)
    if request.method == "GET" and is_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    credentials = "authorization" in request.headers or SESSION_COOKIE in request.cookies
    challenge = 'Bearer realm="pacs"'
    if credentials:
        description = str(exc).replace('"', "'")
        challenge += f', error="invalid_token", error_description="{description}"'
    return JSONResponse(
        {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": challenge}
    )


def _provider_unavailable(request: Request, exc: IdentityProviderUnavailable) -> Response:
    log.warning("503 %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": f"identity provider unavailable: {exc}"}, status_code=503)


def public_root(request: Request, settings: Settings) -> str:
    """The archive's base URL as clients see it (``PACS_PUBLIC_BASE_URL`` or the request's)."""
    public = settings.public_base_url
    return public.rstrip("/") if public else str(request.base_url).rstrip("/")


def set_session_cookie(
    response: Response, request: Request, settings: Settings, token: str
) -> None:
    """Open the web session: HttpOnly, SameSite=Lax, Secure when the site is HTTPS."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_seconds,
        path="/",
        httponly=True,
        samesite="lax",
        secure=public_root(request, settings).startswith("https:"),
    )


def smart_document(
    request: Request, settings: Settings, authenticator: Authenticator
) -> dict[str, Any]:
    """The SMART configuration of this archive: the OIDC issuer's endpoints, or (local
    accounts) the archive's own login page and token endpoint."""
    if authenticator.oidc is not None:
        meta = authenticator.oidc.metadata()
        return smart_configuration(
            str(meta["issuer"]),
            str(meta["authorization_endpoint"]),
            str(meta["token_endpoint"]),
            jwks_uri=str(meta.get("jwks_uri", "")),
            introspection_endpoint=str(meta.get("introspection_endpoint", "")),
            revocation_endpoint=str(meta.get("revocation_endpoint", "")),
        )
    root = public_root(request, settings)
    return smart_configuration(
        root, f"{root}/login", f"{root}/login/token", capabilities=LOCAL_CAPABILITIES
    )
