"""The one exception of the query package."""

from __future__ import annotations


class QueryError(ValueError):
    """A query identifier the archive cannot answer (bad level, missing unique keys...)."""
