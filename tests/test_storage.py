"""Object store: byte-exact round trips on the filesystem and S3, atomic writes, safe keys."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pacs.config import FsyncPolicy, Settings
from pacs.errors import InvalidDicomError, StorageError
from pacs.storage import ObjectStore, instance_key, is_valid_uid, open_store
from pacs.storage.filesystem import FilesystemStore
from pacs.storage.s3 import S3Store
from tests.conftest import Backend

DIGEST = hashlib.sha256(b"x").hexdigest()


def stored_names(store: ObjectStore) -> set[str]:
    """Every object (and, on the filesystem, every leftover file) the store holds."""
    if isinstance(store, FilesystemStore):
        return {str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()}
    assert isinstance(store, S3Store)
    objects = store.client.list_objects(store.bucket, prefix=store.prefix, recursive=True)
    return {str(o.object_name).removeprefix(store.prefix) for o in objects}


# ---------------------------------------------------------------- both backends


def test_round_trip_is_byte_exact(store_backend: Backend) -> None:
    store = open_store(store_backend.settings)
    expected = FilesystemStore if store_backend.storage == "file" else S3Store
    assert isinstance(store, expected)
    store.check()
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5", DIGEST)
    data = bytes(range(256)) * 3 + b"\x00\r\n\xff"  # every byte value, CR/LF and NUL
    assert not store.exists(key)
    store.put(key, data)
    assert store.exists(key)
    assert store.get(key) == data
    assert stored_names(store) == {key}

    replacement = b"DICM" + os.urandom(1000)
    store.put(key, replacement)  # put replaces
    assert store.get(key) == replacement

    store.delete(key)
    assert not store.exists(key)
    assert stored_names(store) == set()
    store.delete(key)  # deleting a missing object is not an error


def test_large_object_round_trip(store_backend: Backend) -> None:
    store = open_store(store_backend.settings)
    data = os.urandom(20 * 1024 * 1024 + 17)  # above S3's multipart threshold, odd length
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.6", hashlib.sha256(data).hexdigest())
    store.put(key, data)
    back = store.get(key)
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    store.delete(key)
    assert not store.exists(key)


def test_missing_key_raises_key_error(store_backend: Backend) -> None:
    store = open_store(store_backend.settings)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.7", DIGEST)
    with pytest.raises(KeyError):
        store.get(key)
    assert not store.exists(key)
    store.put(key, b"data")
    store.delete(key)
    with pytest.raises(KeyError):
        store.get(key)


@pytest.mark.parametrize("key", ["../outside.dcm", "a/../../outside.dcm", "/etc/passwd", "/x"])
def test_keys_cannot_escape_the_store(store_backend: Backend, key: str) -> None:
    store = open_store(store_backend.settings)
    with pytest.raises(ValueError):
        store.put(key, b"evil")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert stored_names(store) == set()
    if isinstance(store, FilesystemStore):
        assert not (store.root.parent / "outside.dcm").exists()


def test_s3_store_uses_its_prefix(store_backend: Backend) -> None:
    store = open_store(store_backend.settings)
    if not isinstance(store, S3Store):
        assert isinstance(store, FilesystemStore)
        assert store.root == (store_backend.settings.data_dir / "objects").resolve()
        return
    assert store.prefix == "archive/"
    store.put("a/b.dcm", b"payload")
    names = {o.object_name for o in store.client.list_objects(store.bucket, recursive=True)}
    assert names == {"archive/a/b.dcm"}


def test_s3_unreachable_endpoint_is_a_storage_error() -> None:
    with pytest.raises(StorageError):
        S3Store("bucket", "", "127.0.0.1:1", "k", "s")


# ---------------------------------------------------------------- filesystem specifics


def test_filesystem_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=FsyncPolicy.NEVER)
    keys = [instance_key("1.2", "1.2.3", f"1.2.3.{i}", DIGEST) for i in range(1, 6)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 1000)
        store.put(key, bytes([i]) * 999)  # rewrite of the same key
    files = sorted(p for p in store.root.rglob("*") if p.is_file())
    assert [str(p.relative_to(store.root)) for p in files] == sorted(keys)
    assert not [p for p in store.root.rglob("*") if p.name.startswith(".")]
    for key in keys:
        store.delete(key)
    assert list(store.root.iterdir()) == []  # empty directories pruned, the root kept
    assert store.root.is_dir()


def test_filesystem_failing_write_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=FsyncPolicy.ALWAYS)
    key = instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST)
    store.put(key, b"first version")
    real_write = os.write
    calls = 0

    def disk_full(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:10]))  # a partial write, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        store.put(key, b"second version, longer than ten bytes")
    other = instance_key("1.2", "1.2.3", "1.2.3.5", DIGEST)
    calls = 0
    with pytest.raises(StorageError):
        store.put(other, b"y" * 100)
    monkeypatch.undo()
    assert store.get(key) == b"first version"  # the old object is untouched
    assert not store.exists(other)
    assert stored_names(store) == {key}  # no temporary file, no partial object


def test_filesystem_failing_rename_or_fsync_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=FsyncPolicy.ALWAYS)
    key = instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST)

    def broken(*_args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageError):
        store.put(key, b"data")
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(StorageError):
        store.put(key, b"data")
    monkeypatch.undo()
    assert stored_names(store) == set()


def test_filesystem_unwritable_location_raises_storage_error(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    (store.root / "1.2").write_bytes(b"a file where a directory should be")
    key = instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST)
    with pytest.raises(StorageError):
        store.put(key, b"data")
    assert stored_names(store) == {"1.2"}
    assert not store.exists(key)


def test_filesystem_check_reports_unwritable_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path / "objects")
    store.check()
    monkeypatch.setattr(os, "access", lambda *_args, **_kw: False)
    with pytest.raises(StorageError):
        store.check()


@pytest.mark.parametrize("policy", ["always", "never"])
def test_fsync_policy_setting_is_respected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    monkeypatch.setenv("PACS_STORAGE_FSYNC", policy)
    store = open_store(Settings(data_dir=tmp_path))
    assert isinstance(store, FilesystemStore)
    assert store.fsync is FsyncPolicy(policy)
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    first = instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST)
    store.put(first, b"data")
    if policy == "never":
        store.put(first, b"again")
        assert synced == []
        return
    # the file, its directory, and the parent of every directory created on the way
    root = store.root
    assert Path(synced[0]).parent == root / "1.2/1.2.3"  # the temporary file
    expected_dirs = {root, root / "1.2", root / "1.2/1.2.3"}
    assert set(synced[1:]) == {str(d) for d in expected_dirs}
    synced.clear()
    store.put(instance_key("1.2", "1.2.3", "1.2.3.5", "0" * 64), b"data")
    assert len(synced) == 2  # an existing directory: the file and that directory only
    assert synced[1] == str(root / "1.2/1.2.3")


def test_filesystem_put_survives_concurrent_pruning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``delete`` elsewhere may prune an empty directory just after ``put`` created it."""
    store = FilesystemStore(tmp_path / "objects", fsync=FsyncPolicy.NEVER)
    key = instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST)
    real_open = os.open
    pruned = 0

    def open_after_prune(path: Any, flags: int, mode: int = 0o777) -> int:
        nonlocal pruned
        parent = Path(path).parent
        if pruned < 2 and parent.is_dir():  # the race, twice in a row
            pruned += 1
            parent.rmdir()
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_after_prune)
    store.put(key, b"data")
    monkeypatch.undo()
    assert pruned == 2
    assert store.get(key) == b"data"
    assert stored_names(store) == {key}


def test_filesystem_get_of_a_directory_is_a_missing_key(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=FsyncPolicy.NEVER)
    store.put(instance_key("1.2", "1.2.3", "1.2.3.4", DIGEST), b"data")
    assert not store.exists("1.2/1.2.3")
    with pytest.raises(KeyError):
        store.get("1.2/1.2.3")


def test_open_store_rejects_unknown_scheme(store_backend: Backend) -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store(store_backend.with_settings(storage_url="ftp://host/objects"))


# ---------------------------------------------------------------- keys


def test_instance_key_layout() -> None:
    digest = hashlib.sha256(b"object").hexdigest()
    key = instance_key("1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3", digest)
    assert key == f"1.2.840.1/1.2.840.1.2/1.2.840.1.2.3.{digest[:16]}.dcm"


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.3/../x",
        "../1.2",
        "/1.2.3",
        "",
        "1" * 65,
        "1." + "2" * 63,
        "1.02",
        "01.2",
        "1.2.",
        ".1.2",
        "1..2",
        "1.2.3a",
        "1.2 ",
        " 1.2",
        "1.2.3\n",
        "1.2.3\x00",
        "\u0661.\u0662",  # Arabic-Indic digits: str.isdigit() but not a UID
    ],
)
def test_instance_key_refuses_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)
    for position in range(3):
        uids = ["1.2.3", "1.2.3.4", "1.2.3.4.5"]
        uids[position] = uid
        with pytest.raises(InvalidDicomError):
            instance_key(uids[0], uids[1], uids[2], DIGEST)


@pytest.mark.parametrize("uid", ["0", "1.0.2", "1.2.840.10008.1.2.1", "1." + "2" * 62])
def test_valid_uids_accepted(uid: str) -> None:
    assert is_valid_uid(uid)
    assert instance_key(uid, uid, uid, DIGEST).startswith(f"{uid}/{uid}/{uid}.")


@pytest.mark.parametrize("digest", ["", "A" * 64, "a" * 63, "g" * 64, "a" * 64 + "\n", "../x"])
def test_instance_key_refuses_bad_digest(digest: str) -> None:
    with pytest.raises(ValueError):
        instance_key("1.2", "1.2.3", "1.2.3.4", digest)
