"""Filesystem object store: atomic writes via a temporary file and rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pacs.config import FsyncPolicy
from pacs.errors import StorageError


class FilesystemStore:
    """Objects as files under ``root``; the key is the relative path.

    With ``FsyncPolicy.ALWAYS`` the file and its directory are fsynced before ``put`` returns,
    so an acknowledged object survives a power cut; ``NEVER`` relies on the page cache (a
    process crash still loses nothing).
    """

    def __init__(self, root: str | Path, fsync: FsyncPolicy = FsyncPolicy.ALWAYS) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            try:
                fd = os.open(tmp, flags, 0o640)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, flags, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync is FsyncPolicy.ALWAYS:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if self.fsync is FsyncPolicy.ALWAYS:
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write object {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete object {key}: {exc}") from exc
        for parent in path.parents:  # prune empty directories up to the root
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"object store directory is not writable: {self.root}")
