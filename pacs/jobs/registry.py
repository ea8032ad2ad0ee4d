"""Analyses by name, as import paths resolved only when a job runs.

An analysis whose module cannot be imported (a missing optional dependency, a typo) fails its
jobs with the reason; it never stops a worker or the archive from starting.
"""

from __future__ import annotations

import importlib

from pacs.jobs import JobError
from pacs.jobs.analysis import Analysis

ANALYSES: dict[str, str] = {
    "ct-chest": "inference.pipeline:analyse_ct_chest",
    "test": "pacs.jobs.testing:analyse_test",
    "noop": "pacs.jobs.testing:analyse_noop",
}
"""Every registered analysis: name -> ``module:callable``."""


class UnknownAnalysisError(JobError):
    """The analysis is not registered or its import path does not resolve."""


def import_path(name: str) -> str:
    """The import path registered for ``name``."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise UnknownAnalysisError(f"no analysis named {name!r}") from None


def resolve(name: str) -> Analysis:
    """Import and return the analysis registered as ``name``."""
    path = import_path(name)
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        analysis: Analysis = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise UnknownAnalysisError(f"analysis {name!r} ({path}) cannot be loaded: {exc}") from exc
    if not callable(analysis):
        raise UnknownAnalysisError(f"analysis {name!r} ({path}) is not callable")
    return analysis
