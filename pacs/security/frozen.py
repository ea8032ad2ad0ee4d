"""A SQL condition whose statement-cache key is computed once.

SQLAlchemy walks every statement it executes to compute the key of its compiled-statement
cache; for the access policy's reach conditions (dozens of nested ``EXISTS``) that walk costs
more than running the query. The conditions are immutable and built once per reach, so
:class:`Frozen` computes their key once and hands it (with its bound parameters, in the same
order) to every statement that embeds it; compilation and traversal see the condition itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.cache_key import HasCacheKey
from sqlalchemy.sql.visitors import InternalTraversal


class Frozen(ColumnElement[bool]):
    """``element`` with a cache key computed at construction."""

    __visit_name__ = "frozen_condition"
    inherit_cache = False
    type = Boolean()
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, element: ColumnElement[bool]) -> None:
        self.element = element
        key = HasCacheKey._generate_cache_key(element)
        self._frozen = None if key is None else (("frozen", key.key), list(key.bindparams))

    def _gen_cache_key(self, anon_map: Any, bindparams: list[Any]) -> Any:
        if self._frozen is None:
            return self.element._gen_cache_key(anon_map, bindparams)
        key, binds = self._frozen
        bindparams.extend(binds)
        return key


@compiles(Frozen)
def _compile(element: Frozen, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.element, **kw)})"  # one operand wherever it stands
