"""A not-assessable CT analysis reaches the EMR and the review as "not assessable: <reason>"
(issue 10, part 3): a preliminary DiagnosticReport whose conclusion says it, no grade."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session

from inference import pipeline
from pacs.emr.feed import EmrFeed
from pacs.emr.review import review_view
from pacs.fhir.store import FhirStore
from testkit.chest_phantom import chest_phantom, dense_lung_base, phantom_series
from testkit.inference_helpers import TruthSegmenter, open_archive
from tests.conftest import Backend

URL = "http://archive.example"


def test_no_lung_result_reaches_the_emr_and_review(
    db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    phantom = chest_phantom(size=48, slices=12, seed=3)
    no_lung = np.zeros_like(phantom.lungs)
    no_lung[5, 20:22, 10:12] = 1  # a speck of "lung", as in an abdominal CT
    segmenter = TruthSegmenter(no_lung)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda settings: segmenter)
    for archive in open_archive(db_backend.with_settings(inference_min_slices=10)):
        datasets = phantom_series(phantom)
        archive.store(datasets)
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        result = pipeline.analyse_ct_chest(archive.context(study, [series]))
        store = FhirStore(archive.engine)
        EmrFeed(archive.engine, store, URL).run_once()
        [entry] = store.search("DiagnosticReport", [])["entry"]
        report = entry["resource"]
        assert report["status"] == "preliminary"
        assert "Not assessable: no lungs in the scan" in report["conclusion"]
        assert "CT-" not in report["conclusion"]
        assert report.get("result", []) == []  # no measurement, no grade Observation
        with Session(archive.engine) as session:
            view = review_view(session, store, int(result.summary["result_pk"]), URL)
        assert "Not assessable: no lungs in the scan" in view["conclusion"]
        assert view["findings"] == []


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # same path as above
def test_asymmetric_lungs_reach_the_emr_with_volumes_and_no_grade(
    db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half of the right lung dense and outside the mask: the EMR gets the volumes and the
    reason, never the falsely low grade."""
    dense, mask = dense_lung_base(chest_phantom(size=48, slices=12, seed=3), 1, 0.5)
    segmenter = TruthSegmenter(mask)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda settings: segmenter)
    for archive in open_archive(db_backend.with_settings(inference_min_slices=10)):
        datasets = phantom_series(dense)
        archive.store(datasets)
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        pipeline.analyse_ct_chest(archive.context(study, [series]))
        store = FhirStore(archive.engine)
        EmrFeed(archive.engine, store, URL).run_once()
        [entry] = store.search("DiagnosticReport", [])["entry"]
        report = entry["resource"]
        assert report["status"] == "preliminary"
        assert "Not assessable: right lung" in report["conclusion"]
        assert "may lie outside the lung mask" in report["conclusion"]
        assert "CT-" not in report["conclusion"]
        observations = [store.read(*ref["reference"].split("/")) for ref in report["result"]]
        texts = [obs["code"]["text"] for obs in observations]
        assert len(texts) == 2 and all("volume" in text.lower() for text in texts), texts
