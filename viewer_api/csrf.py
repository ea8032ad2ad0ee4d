"""CSRF protection for cookie-authenticated requests (pure ASGI middleware).

A browser sends the session cookie (``pacs_session``) with any request to the archive, also
one a foreign site makes it send. An unsafe request (POST, PUT, PATCH, DELETE) that carries
the session cookie and no ``Authorization`` header must therefore prove it comes from the
archive's own pages: either a double-submit token (the ``X-CSRF-Token`` header equal to the
``pacs_csrf`` cookie, which only pages of the archive's origin can read) or an ``Origin`` (or,
without one, a ``Referer``) equal to the archive's own origin. Otherwise: 403. Bearer-token
requests are exempt: a browser never adds that header on its own. The middleware issues the
``pacs_csrf`` cookie to every session that has none.
"""

from __future__ import annotations

import hmac
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.security.authn import SESSION_COOKIE

CSRF_COOKIE = "pacs_csrf"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-case ('' when it has none)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def _cookies(headers: Headers) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for value in headers.getlist("cookie"):
        try:
            jar.load(value)
        except Exception:  # a malformed cookie header holds no session
            continue
    return {name: morsel.value for name, morsel in jar.items()}


class CSRFMiddleware:
    """Refuses cross-site unsafe requests authenticated by the session cookie."""

    def __init__(self, app: ASGIApp, public_base_url: str | None = None) -> None:
        self.app = app
        self.public_origin = _origin(public_base_url or "")

    def own_origin(self, scope: Scope, headers: Headers) -> str:
        """The archive's origin: its public URL's, else the one this request addressed."""
        if self.public_origin:
            return self.public_origin
        return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()

    def allowed(self, scope: Scope, headers: Headers, cookies: dict[str, str]) -> bool:
        """Whether an unsafe cookie-authenticated request proves it is same-site."""
        token = headers.get(CSRF_HEADER, "")
        expected = cookies.get(CSRF_COOKIE, "")
        if token and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return True
        source = headers.get("origin") or _origin(headers.get("referer", ""))
        return bool(source) and source.lower() == self.own_origin(scope, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = _cookies(headers)
        if SESSION_COOKIE not in cookies:
            await self.app(scope, receive, send)
            return
        if (
            scope["method"] in UNSAFE_METHODS
            and "authorization" not in headers
            and not self.allowed(scope, headers, cookies)
        ):
            await _forbidden(send)
            return
        if CSRF_COOKIE in cookies:
            await self.app(scope, receive, send)
            return
        secure = "; Secure" if self.own_origin(scope, headers).startswith("https:") else ""
        cookie = f"{CSRF_COOKIE}={secrets.token_urlsafe(32)}; Path=/; SameSite=Strict{secure}"

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_token)


async def _forbidden(send: Send) -> None:
    body = json.dumps(
        {
            "detail": "cross-site request refused: a cookie-authenticated "
            f"{'/'.join(sorted(UNSAFE_METHODS))} needs the {CSRF_HEADER} header "
            f"(the {CSRF_COOKIE} cookie's value) or a same-origin Origin"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
