"""Security headers on every HTTP response (pure ASGI middleware: streams pass untouched).

Every response: ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``;
``Strict-Transport-Security`` when the request came over HTTPS (directly, or through a proxy
whose ``X-Forwarded-Proto`` uvicorn trusts) or the archive's public URL is https. HTML
responses also get the Content-Security-Policy (``PACS_CONTENT_SECURITY_POLICY``: by default
only the archive's own scripts, no framing) and ``X-Frame-Options`` (``PACS_FRAME_OPTIONS``).
A route that sets its own CSP (the API docs, which need their inline script) keeps it.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.config import Settings

HSTS = "max-age=31536000; includeSubDomains"
REFERRER_POLICY = "no-referrer"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def inline_script_policy(html: str, policy: str) -> str:
    """``policy`` with a ``script-src`` allowing exactly the inline scripts of ``html`` (by
    their SHA-256), for pages whose inline script cannot move to a file."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return f"{policy}; script-src 'self' {hashes}".strip()


class SecurityHeadersMiddleware:
    """Adds the security headers of ``settings`` to every HTTP response."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.csp = settings.content_security_policy
        self.frame_options = settings.frame_options
        self.always_https = (settings.public_base_url or "").lower().startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.always_https or scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", REFERRER_POLICY)
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                if headers.get("content-type", "").startswith("text/html"):
                    if self.csp:
                        headers.setdefault("Content-Security-Policy", self.csp)
                    if self.frame_options:
                        headers.setdefault("X-Frame-Options", self.frame_options)
            await send(message)

        await self.app(scope, receive, send_with_headers)
