"""Filesystem object store: atomic writes via a temporary file and rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from pacs.config import FsyncPolicy
from pacs.errors import StorageError

_CREATE_ATTEMPTS = 5
"""How often ``put`` recreates directories that a concurrent ``delete`` pruned."""


class FilesystemStore:
    """Objects as files under ``root``; the key is the relative path.

    With ``FsyncPolicy.ALWAYS`` the file, its directory and the parent of every directory
    created for it are fsynced before ``put`` returns, so an acknowledged object survives a
    power cut; ``NEVER`` relies on the page cache (a
    process crash still loses nothing).
    """

    def __init__(self, root: str | Path, fsync: FsyncPolicy = FsyncPolicy.ALWAYS) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        """The file of ``key``; checked lexically (no filesystem calls on the hot path)."""
        parts = key.split("/")
        if (
            not key
            or "\x00" in key
            or "\\" in key
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise ValueError(f"object key escapes the store: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd, grown = self._create(tmp)
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
                for directory in dict.fromkeys([path.parent, *grown]):
                    _fsync_directory(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write object {key}: {exc.strerror or exc}") from exc

    def _create(self, tmp: Path) -> tuple[int, list[Path]]:
        """Open ``tmp`` exclusively, creating missing directories on the way.

        Returns the descriptor and the directories that gained a new subdirectory (their
        entries must be fsynced too). A concurrent ``delete`` may prune an empty directory
        between its creation and the open, so that case is retried.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        grown: list[Path] = []
        for _ in range(_CREATE_ATTEMPTS - 1):
            try:
                return os.open(tmp, flags, 0o640), grown
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileNotFoundError):
                grown += self._make_directories(tmp.parent)
        return os.open(tmp, flags, 0o640), grown

    def _make_directories(self, directory: Path) -> list[Path]:
        """Create ``directory`` and its missing ancestors below the root; return the parents
        of the directories created."""
        missing: list[Path] = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
        return [path.parent for path in missing]

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc.strerror or exc}") from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc.strerror or exc}") from exc

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


def _fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (new names, renames) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
