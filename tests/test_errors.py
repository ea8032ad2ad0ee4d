"""``PacsError`` is the base of every exception the ``pacs`` package defines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pacs
from pacs.errors import PacsError


def test_every_pacs_exception_derives_from_pacs_error() -> None:
    defined = []
    for info in pkgutil.walk_packages(pacs.__path__, "pacs."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                defined.append(cls)
    assert len(defined) > 20
    assert [c.__qualname__ for c in defined if not issubclass(c, PacsError)] == []
