"""The one exception of the query package."""

from __future__ import annotations

from pacs.errors import PacsError


class QueryError(PacsError, ValueError):
    """A query identifier the archive cannot answer (bad level, missing unique keys...)."""
