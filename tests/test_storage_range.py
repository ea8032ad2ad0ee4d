"""Ranged reads of the object stores (WADO-RS frames): filesystem seek, S3 ranged GET."""

from __future__ import annotations

import hashlib

import pytest

from pacs.storage import instance_key, open_store
from tests.conftest import Backend


def test_get_range_reads_only_the_range(store_backend: Backend) -> None:
    store = open_store(store_backend.settings)
    data = bytes(range(256)) * 40
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.6", hashlib.sha256(data).hexdigest())
    store.put(key, data)
    assert store.get_range(key, 0, 10) == data[:10]
    assert store.get_range(key, 1000, 300) == data[1000:1300]
    assert store.get_range(key, len(data) - 5, 5) == data[-5:]
    assert store.get_range(key, len(data) - 5, 50) == data[-5:]  # fewer bytes at the end
    missing = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.7", hashlib.sha256(b"").hexdigest())
    with pytest.raises(KeyError):
        store.get_range(missing, 0, 10)
