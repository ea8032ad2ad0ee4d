"""Object store: whole Part-10 objects, byte-exact, under keys built from validated UIDs."""

from pacs.storage.base import ObjectStore, open_store
from pacs.storage.keys import instance_key, is_valid_uid

__all__ = ["ObjectStore", "instance_key", "is_valid_uid", "open_store"]
