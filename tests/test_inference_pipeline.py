"""The ct-chest analysis on both databases: stages, stored SEG + SR, ai_result, re-runs,
refusals, and an inference failure through the job queue (failed, retried, dead)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from inference import pipeline, records
from inference.errors import RefusalReason, VolumeRefusedError
from pacs import changes
from pacs.index.models import Instance, Series
from pacs.jobs import queue as jobs
from pacs.jobs.analysis import AnalysisRefused
from pacs.jobs.models import Job
from pacs.jobs.worker import Worker
from testkit.chest_phantom import Phantom, chest_phantom, phantom_series
from testkit.inference_helpers import Archive, FailingSegmenter, TruthSegmenter, open_archive
from tests.conftest import Backend


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return chest_phantom(size=64, slices=20, involvement=0.3, emphysema=0.05, seed=8)


@pytest.fixture
def archive(db_backend: Backend) -> Iterator[Archive]:
    yield from open_archive(db_backend.with_settings(inference_min_slices=10))


def stored(archive: Archive, phantom: Phantom) -> tuple[str, str, list[Dataset]]:
    datasets = phantom_series(phantom, shuffle_seed=4)
    archive.store(datasets)
    return str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID), datasets


def series_of(archive: Archive, sop_uid: str) -> tuple[str, int]:
    with archive.engine.connect() as conn:
        row = conn.execute(
            select(Series.series_instance_uid, Series.number_of_series_related_instances)
            .join(Instance, Instance.series_pk == Series.pk)
            .where(Instance.sop_instance_uid == sop_uid)
        ).one()
    return row[0], row[1]


def test_analysis_stores_seg_sr_and_result(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series, _ = stored(archive, phantom)
    segmenter = TruthSegmenter(phantom.lungs)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda settings: segmenter)
    result = pipeline.analyse_ct_chest(archive.context(study, [series]))
    seg_uid, sr_uid = result.output_sop_instance_uids
    assert series_of(archive, seg_uid)[1] == 1 and series_of(archive, sr_uid)[1] == 1
    assert len(archive.heartbeats) >= 2
    stages = {"read", "volume", "predict", "quantify", "seg", "sr", "store", "record"}
    assert set(result.summary["timings_s"]) == stages
    measurements = result.summary["measurements"]
    assert measurements["involvement_percent"] == pytest.approx(30, abs=5)
    assert measurements["ct_severity_grade"] == "CT-2"
    assert measurements["emphysema_index_percent"] == pytest.approx(5, abs=1.5)
    with archive.engine.connect() as conn:
        [row] = records.results_of_study(conn, study)
        events = changes.read_since(conn, 0, limit=1000, kinds={"result.stored"})
    assert row["status"] == "preliminary"
    assert row["study_version"] == 1 and row["analysis"] == "ct-chest"
    assert row["source_series_instance_uid"] == series
    assert row["model_versions"] == {"lung-seg": "0.0.0-test", "lung-densitometry": "1.0"}
    assert row["measurements"] == measurements
    assert (row["seg_sop_instance_uid"], row["sr_sop_instance_uid"]) == (seg_uid, sr_uid)
    assert row["seg_series_instance_uid"] == series_of(archive, seg_uid)[0]
    assert [e.payload for e in events] == [{"result_pk": row["pk"]}]
    assert events[0].study_instance_uid == study


def test_rerun_replaces_and_new_version_adds(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series, _ = stored(archive, phantom)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: TruthSegmenter(phantom.lungs))
    first = pipeline.analyse_ct_chest(archive.context(study, [series]))
    again = pipeline.analyse_ct_chest(archive.context(study, [series]))
    assert again.output_sop_instance_uids == first.output_sop_instance_uids
    assert again.summary["result_pk"] == first.summary["result_pk"]
    for uid in first.output_sop_instance_uids:
        assert series_of(archive, uid)[1] == 1  # replaced, not duplicated
    newer = pipeline.analyse_ct_chest(archive.context(study, [series], version=2))
    assert set(newer.output_sop_instance_uids).isdisjoint(first.output_sop_instance_uids)
    with archive.engine.connect() as conn:
        rows = records.results_of_study(conn, study)
        events = changes.read_since(conn, 0, limit=1000, kinds={"result.stored"})
    assert [r["study_version"] for r in rows] == [2, 1]
    assert len(events) == 3  # every store is announced, the row is replaced in place


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # pipeline logic only
def test_refused_series_is_skipped_for_the_next(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, good, _ = stored(archive, phantom)
    gappy = phantom_series(phantom, study_uid=study)
    archive.store([ds for k, ds in enumerate(gappy) if k not in (10, 11)])
    bad = str(gappy[0].SeriesInstanceUID)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: TruthSegmenter(phantom.lungs))
    result = pipeline.analyse_ct_chest(archive.context(study, [bad, good]))
    assert result.summary["source_series_instance_uid"] == good
    with pytest.raises(AnalysisRefused) as refused:
        pipeline.analyse_ct_chest(archive.context(study, [bad], version=2))
    cause = refused.value.__cause__
    assert isinstance(cause, VolumeRefusedError)
    assert cause.reason is RefusalReason.MISSING_SLICES


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # queue logic only
def test_refused_series_fails_the_job_without_retries(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, _, _ = stored(archive, phantom)
    gappy = phantom_series(phantom, study_uid=study)
    archive.store([ds for k, ds in enumerate(gappy) if k not in (10, 11)])
    segmenter = FailingSegmenter(phantom.lungs)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: segmenter)
    with jobs.write(archive.engine) as conn:
        pk = jobs.enqueue(
            conn,
            analysis="ct-chest",
            study_instance_uid=study,
            study_version=1,
            series_instance_uids=[str(gappy[0].SeriesInstanceUID)],
            max_attempts=5,
        )
    worker = Worker(archive.settings, archive.engine, archive.ingest)
    job = jobs.claim(archive.engine, worker.owner, 60)
    assert job is not None and job.pk == pk
    assert worker.run(job) == jobs.DEAD  # a retry could not change the series
    with archive.engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.pk == pk)).mappings().one()
    assert row["attempts"] == 1 and "missing_slices" in row["error"]
    assert segmenter.calls == 0


def test_inference_failure_fails_the_job_and_retries_per_policy(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series, _ = stored(archive, phantom)
    segmenter = FailingSegmenter(phantom.lungs)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda s: segmenter)
    with jobs.write(archive.engine) as conn:
        pk = jobs.enqueue(
            conn,
            analysis="ct-chest",
            study_instance_uid=study,
            study_version=1,
            series_instance_uids=[series],
            max_attempts=2,
        )
    worker = Worker(archive.settings, archive.engine, archive.ingest)
    job = jobs.claim(archive.engine, worker.owner, 60)
    assert job is not None and job.pk == pk
    assert worker.run(job) == jobs.FAILED
    with archive.engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.pk == pk)).mappings().one()
    assert "input dimension mismatch" in row["error"]
    assert row["attempts"] == 1
    assert jobs.claim(archive.engine, worker.owner, 60) is None  # backoff before the retry
    with jobs.write(archive.engine) as conn:  # let the backoff pass
        conn.execute(
            update(Job).where(Job.pk == pk).values(run_after=row["run_after"] - timedelta(days=1))
        )
    job = jobs.claim(archive.engine, worker.owner, 60)
    assert job is not None and job.attempts == 2
    assert worker.run(job) == jobs.DEAD  # max_attempts reached: dead letter, error kept
    assert segmenter.calls == 2
    with archive.engine.connect() as conn:
        assert records.results_of_study(conn, study) == []
