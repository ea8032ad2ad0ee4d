"""The web login (public): ``/login`` (a form for local accounts; under ``PACS_AUTH=oidc`` a
redirect to the issuer, code flow with PKCE), ``/login/callback``, ``/logout``, and
``/login/token`` (a password grant for scripts; the SMART token endpoint of the embedded
default). A successful login opens the ``pacs_session`` cookie and returns to ``next``."""

from __future__ import annotations

from html import escape
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from pacs.security import web_login
from pacs.security.authn import SESSION_COOKIE
from pacs.security.errors import NotAuthenticated
from viewer_api.authn import public_root, set_session_cookie
from viewer_api.deps import AuthenticatorDep, SettingsDep

router = APIRouter(tags=["login"])

MAX_FORM_BYTES = 8192
Next = Annotated[str, Query(alias="next")]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in: imaging archive</title>
<style>body{{font-family:sans-serif;margin:2em}}label{{display:block;margin:.5em 0}}
.error{{color:#b00}}</style></head>
<body><h1>Imaging archive</h1>{error}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Name <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
required></label>
<button type="submit">Log in</button></form></body></html>"""


def _page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return HTMLResponse(
        _PAGE.format(next=escape(web_login.safe_next(next_path)), error=message),
        status_code=status,
    )


async def _form(request: Request) -> dict[str, str]:
    """The fields of a small ``application/x-www-form-urlencoded`` body (first values)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _callback_url(request: Request, settings: SettingsDep) -> str:
    return f"{public_root(request, settings)}/login/callback"


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(
    request: Request, settings: SettingsDep, authenticator: AuthenticatorDep, next_path: Next = "/"
) -> Response:
    """The login form; under OIDC a redirect to the issuer's authorize endpoint."""
    if authenticator.oidc is None:
        return _page(next_path)
    started = web_login.start(
        authenticator.oidc, authenticator.tokens, _callback_url(request, settings), next_path
    )
    response = RedirectResponse(started.authorize_url, status_code=302)
    response.set_cookie(
        web_login.LOGIN_COOKIE,
        started.cookie,
        max_age=web_login.LOGIN_TTL_SECONDS,
        path="/login",
        httponly=True,
        samesite="lax",
        secure=public_root(request, settings).startswith("https:"),
    )
    return response


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(
    request: Request, settings: SettingsDep, authenticator: AuthenticatorDep
) -> Response:
    """Check a local account's name and password; open the session and go to ``next``."""
    form = await _form(request)
    next_path = form.get("next", "/")
    subject = await run_in_threadpool(
        authenticator.login, form.get("name", ""), form.get("password", ""), _client(request)
    )
    if subject is None:
        return _page(next_path, "Wrong name or password.", status=401)
    response = RedirectResponse(web_login.safe_next(next_path), status_code=303)
    set_session_cookie(response, request, settings, authenticator.session_token(subject, "local"))
    return response


@router.get("/login/callback", response_class=HTMLResponse, include_in_schema=False)
def login_callback(
    request: Request,
    settings: SettingsDep,
    authenticator: AuthenticatorDep,
    code: str = "",
    state: str = "",
    error: str = "",
) -> Response:
    """The issuer's redirect after the login: exchange the code, open the session."""
    if authenticator.oidc is None:
        raise HTTPException(404, "no OIDC login (PACS_AUTH is not oidc)")
    if error or not code:
        return _page("/", f"The identity provider refused the login: {error or 'no code'}.", 401)
    try:
        subject, next_path = web_login.finish(
            authenticator.oidc,
            authenticator.tokens,
            code,
            state,
            request.cookies.get(web_login.LOGIN_COOKIE),
            _callback_url(request, settings),
            _client(request),
        )
    except NotAuthenticated as exc:
        return _page("/", f"Login failed: {exc}", status=401)
    response = RedirectResponse(next_path, status_code=303)
    response.delete_cookie(web_login.LOGIN_COOKIE, path="/login")
    set_session_cookie(response, request, settings, authenticator.session_token(subject, "oidc"))
    return response


@router.post("/logout", include_in_schema=False)
def logout() -> Response:
    """End the web session."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/login/token", include_in_schema=False)
async def token(request: Request, authenticator: AuthenticatorDep) -> Response:
    """OAuth 2 password grant for local accounts: ``grant_type=password&username=&password=``
    -> a bearer token (as ``pacs token``)."""
    form = await _form(request)
    if form.get("grant_type") != "password":
        return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
    subject = await run_in_threadpool(
        authenticator.login, form.get("username", ""), form.get("password", ""), _client(request)
    )
    if subject is None:
        return JSONResponse({"error": "invalid_grant"}, status_code=400)
    return JSONResponse(
        {
            "access_token": authenticator.access_token(subject),
            "token_type": "Bearer",
            "expires_in": authenticator.settings.token_ttl_seconds,
        },
        headers={"Cache-Control": "no-store"},
    )
