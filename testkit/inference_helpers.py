"""Helpers of the CT analysis tests: an archive index to run the pipeline against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from inference import results
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService, Source
from pacs.jobs.analysis import AnalysisContext
from pacs.runtime import build_ingest


@dataclass
class Archive:
    """An index + object store + ingest service on one test backend."""

    settings: Settings
    engine: Engine
    ingest: IngestService
    heartbeats: list[int] = field(default_factory=list)

    def store(self, datasets: list[Dataset]) -> None:
        """Ingest ``datasets`` as a modality would (C-STORE channel)."""
        for ds in datasets:
            outcome = self.ingest.store_part10(results.encode(ds), Source("dimse", "CT01"))
            assert outcome.status.ok, outcome

    def context(self, study_uid: str, series_uids: list[str], version: int = 1) -> AnalysisContext:
        """The context a worker would give the ``ct-chest`` analysis."""
        return AnalysisContext(
            job_id=7,
            analysis="ct-chest",
            study_instance_uid=study_uid,
            series_instance_uids=series_uids,
            study_version=version,
            settings=self.settings,
            engine=self.engine,
            store=self.ingest.store,
            ingest=self.ingest,
            heartbeat=lambda: self.heartbeats.append(1),
        )


def open_archive(settings: Settings) -> Iterator[Archive]:
    """An ``Archive`` on ``settings``; disposed afterwards."""
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    try:
        yield Archive(settings, engine, ingest)
    finally:
        engine.dispose()
        ingest.engine.dispose()


class TruthSegmenter:
    """A stand-in lung model for tests: returns known labels (phantom truth) on the input grid."""

    def __init__(self, labels: np.ndarray, name: str = "lung-seg", version: str = "0.0.0-test"):
        self.labels = labels
        self.manifest: Any = SimpleNamespace(name=name, version=version)
        self.calls = 0

    def segment(self, volume: sitk.Image) -> sitk.Image:
        self.calls += 1
        image = sitk.GetImageFromArray(self.labels.astype(np.uint8))
        image.CopyInformation(volume)
        return image


class FailingSegmenter(TruthSegmenter):
    """A lung model whose inference fails."""

    def segment(self, volume: sitk.Image) -> sitk.Image:
        self.calls += 1
        raise RuntimeError("onnxruntime: input dimension mismatch (test)")
