"""Request body limit of the JSON endpoints (``http_max_json_bytes``), as ASGI middleware.

A body announced longer (``Content-Length``) is answered 413 before a byte of it is read; a
body streamed without a length (chunked) is counted as it arrives and refused with 413 as soon
as it passes the limit, so no endpoint ever holds more than the limit. Paths that stream their
bodies under a limit of their own (FHIR: ``fhir_max_body_bytes`` with an OperationOutcome;
STOW-RS: spooled, ``max_object_size`` per part) are left to it.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes on every path not under ``exempt``."""

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            detail = f"the body ({declared} bytes) is over the limit of {self.limit} bytes"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"the body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
