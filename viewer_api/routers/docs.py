"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served with their assets from this node.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, a blank page on a hospital network
without Internet access. This is FastAPI's self-hosted docs recipe: the JavaScript, CSS and
favicon come from the ``fastapi-offline`` package, under ``/docs/assets/``. Public: no
``CurrentUser`` (see ``viewer_api.app.PUBLIC_ROUTERS``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from viewer_api.security_headers import inline_script_policy

router = APIRouter(include_in_schema=False)

ASSETS_PATH = "/docs/assets"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
"""The files served under ``ASSETS_PATH`` and their media types."""
_ASSET_DIR = Path(str(files("fastapi_offline") / "static"))
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def _base(request: Request) -> str:
    """The path prefix of this app behind a proxy (``root_path``), as FastAPI's own pages use."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, with local assets."""
    base = _base(request)
    page = get_swagger_ui_html(
        openapi_url=f"{base}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{base}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=f"{base}{_OAUTH2_REDIRECT}",
    )
    return _with_inline_scripts(request, page)


@router.get(_OAUTH2_REDIRECT)
def swagger_ui_oauth2_redirect(request: Request) -> HTMLResponse:
    """The OAuth2 redirect page of Swagger UI (inline, no assets)."""
    return _with_inline_scripts(request, get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc for ``/openapi.json``, with local assets and no web fonts."""
    base = _base(request)
    page = get_redoc_html(
        openapi_url=f"{base}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{base}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{base}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
    return _with_inline_scripts(request, page)


def _with_inline_scripts(request: Request, page: HTMLResponse) -> HTMLResponse:
    """``page`` with the archive's Content-Security-Policy widened by exactly its own inline
    scripts (by hash) and blob: workers (ReDoc)."""
    policy = request.app.state.settings.content_security_policy
    if policy:
        html = bytes(page.body).decode()
        page.headers["Content-Security-Policy"] = inline_script_policy(
            html, f"{policy}; worker-src 'self' blob:"
        )
    return page


@router.get(ASSETS_PATH + "/{name}")
def asset(name: str) -> FileResponse:
    """One of the ``ASSETS``; 404 for any other name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such docs asset: {name}")
    return FileResponse(
        _ASSET_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"}
    )
