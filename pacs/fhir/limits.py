"""How much one FHIR response may carry: a budget of resources shared by a search's matches
and includes, and by every entry of a ``batch``/``transaction`` response.

Resources are parsed into Python dicts to be answered (several KiB each), so the budget is what
bounds a request's memory: a batch of thousands of searches, each with ``_count=1000`` and
includes, once made one request grow to tens of GB.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacs.fhir.errors import TooCostly

DEFAULT_MAX_RESOURCES = 5000
"""Default of ``fhir_max_response_resources``."""
DEFAULT_MAX_BUNDLE_ENTRIES = 1000
"""Default of ``fhir_max_bundle_entries``."""
MAX_INCLUDES = 10
"""Most ``_include`` and ``_revinclude`` parameters of one search."""


@dataclass
class ResourceBudget:
    """Resources a response may still carry."""

    left: int

    def take(self, count: int) -> None:
        """Spend ``count``; ``TooCostly`` when fewer are left (nothing spent)."""
        if count > self.left:
            raise TooCostly(
                f"the response would carry more than the {self.left} resources still allowed "
                "(fhir_max_response_resources); narrow the search or page with _count"
            )
        self.left -= count
