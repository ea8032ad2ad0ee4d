"""Writing ``multipart/related`` response bodies (RFC 2387) one part at a time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator


def new_boundary() -> str:
    """A boundary that cannot occur in the parts (random, 32 hex digits)."""
    return uuid.uuid4().hex


def content_type(boundary: str, media_type: str, transfer_syntax: str = "") -> str:
    """The Content-Type of a multipart/related body whose parts are ``media_type``."""
    value = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return f"{value}; transfer-syntax={transfer_syntax}" if transfer_syntax else value


def part_head(
    boundary: str, media_type: str, transfer_syntax: str = "", location: str = ""
) -> bytes:
    """The delimiter and headers that precede one part's content."""
    header = f"--{boundary}\r\nContent-Type: {media_type}"
    if transfer_syntax:
        header += f"; transfer-syntax={transfer_syntax}"
    if location:
        header += f"\r\nContent-Location: {location}"
    return (header + "\r\n\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter, after the last part."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def body(boundary: str, parts: Iterator[tuple[str, str, bytes]]) -> Iterator[bytes]:
    """Frame (media type, transfer syntax, content) parts as one body, one chunk per part
    (a streamed chunk costs a thread hop: fewer, larger chunks go faster)."""
    first = True
    for media_type, syntax, content in parts:
        head = (b"" if first else b"\r\n") + part_head(boundary, media_type, syntax)
        yield b"".join((head, content))
        first = False
    yield closing(boundary) if not first else f"--{boundary}--\r\n".encode("ascii")
