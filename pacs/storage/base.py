"""The object store interface and the factory that picks a backend from a URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from pacs.config import Settings


class ObjectStore(Protocol):
    """Stores immutable objects under string keys.

    ``put`` returns only once the object is durable (as far as the backend's policy goes);
    a reader never sees a partial object.
    """

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (replacing any object with that key)."""

    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise ``KeyError`` if it does not exist."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of the object from ``offset`` (fewer at its end); raise
        ``KeyError`` if it does not exist."""

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    def check(self) -> None:
        """Raise if the store cannot be reached or written."""


def open_store(settings: Settings) -> ObjectStore:
    """Open the store named by ``settings.resolved_storage_url`` (``file://`` or ``s3://``)."""
    url = urlparse(settings.resolved_storage_url)
    if url.scheme == "file":
        from pacs.storage.filesystem import FilesystemStore

        return FilesystemStore(unquote(url.path), fsync=settings.storage_fsync)
    if url.scheme == "s3":
        from pacs.storage.s3 import S3Store

        return S3Store(
            bucket=url.netloc,
            prefix=url.path.strip("/"),
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    raise ValueError(f"unsupported storage URL scheme {url.scheme!r} (use file:// or s3://)")
