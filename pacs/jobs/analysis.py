"""What an analysis run by a job receives and returns (the contract with analysis authors).

An analysis is a callable ``(AnalysisContext) -> AnalysisResult`` registered by name in
``pacs.jobs.registry``. It must be idempotent: run again for the same study version (after a
crash, a lease expiry or an operator retry) it replaces, never duplicates, its outputs, for
example by deriving its output UIDs from the study UID, the study version and the model version.
Objects it stores with ``ctx.ingest`` should use ``ctx.source`` (channel ``analysis``, marked
derived), so that they do not re-open the study they were derived from (``pacs.ingest.derived``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from pacs.config import Settings
from pacs.ingest import IngestService, Source
from pacs.jobs import JobError
from pacs.storage.base import ObjectStore

ANALYSIS_CHANNEL = "analysis"
"""``Source.channel`` of objects stored by analyses (all derived: they never re-open a study)."""


class JobCancelled(JobError):
    """An operator cancelled the job; raised by ``AnalysisContext.heartbeat``."""


class AnalysisRefused(JobError):
    """The study's input can never be analysed (e.g. no acceptable series): an analysis raises
    it so that the job fails at once, with this reason kept, instead of being retried."""


@dataclass(frozen=True)
class AnalysisContext:
    """Everything a running analysis may use.

    ``heartbeat()`` extends the job's lease; call it at least every ``job_lease_seconds / 3``
    during long work. It raises ``JobCancelled`` once an operator cancelled the job (the
    analysis should let it propagate) and ``JobError`` if the lease was lost to another worker.
    """

    job_id: int
    analysis: str
    study_instance_uid: str
    series_instance_uids: list[str]
    study_version: int
    settings: Settings
    engine: Engine
    store: ObjectStore
    ingest: IngestService
    heartbeat: Callable[[], None]
    source: Source = field(default_factory=lambda: Source(ANALYSIS_CHANNEL, derived=True))
    options: dict[str, Any] = field(default_factory=dict)  # the routing rule's ``options``


@dataclass(frozen=True)
class AnalysisResult:
    """What an analysis produced: the SOP Instance UIDs it stored and a JSON summary."""

    output_sop_instance_uids: list[str]
    summary: dict[str, Any] = field(default_factory=dict)


Analysis = Callable[[AnalysisContext], AnalysisResult]
