"""Analyses by name, as import paths resolved only when a job runs.

An analysis whose module cannot be imported (a missing optional dependency, a typo) fails its
jobs with the reason; it never stops a worker or the archive from starting.
"""

from __future__ import annotations

import importlib
import os

from pacs.jobs import JobError
from pacs.jobs.analysis import Analysis

ANALYSES: dict[str, str] = {
    "ct-chest": "inference.pipeline:analyse_ct_chest",
}
"""The archive's analyses: name -> ``module:callable``."""

TEST_ANALYSES: dict[str, str] = {
    "test": "pacs.jobs.testing:analyse_test",
    "noop": "pacs.jobs.testing:analyse_noop",
}
"""Analyses that exercise the job path without a model (:mod:`pacs.jobs.testing`),
registered only where the environment sets ``PACS_TEST_ANALYSES=1``: the test suite (see
``tests/__init__.py``) and the jobs benchmark do, so rules naming them are refused elsewhere."""


def registered() -> dict[str, str]:
    """Every analysis a rule may name in this process: name -> ``module:callable``."""
    if os.environ.get("PACS_TEST_ANALYSES") == "1":
        return {**ANALYSES, **TEST_ANALYSES}
    return dict(ANALYSES)


class UnknownAnalysisError(JobError):
    """The analysis is not registered or its import path does not resolve."""


def import_path(name: str) -> str:
    """The import path registered for ``name``."""
    try:
        return registered()[name]
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
