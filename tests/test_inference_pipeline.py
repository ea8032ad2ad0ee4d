"""The ct-chest analysis on both databases: stages, stored SEG + SR, ai_result, re-runs,
refusals, and an inference failure through the job queue (failed, retried, dead)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from inference import pipeline, records, results
from inference.errors import RefusalReason, VolumeRefusedError
from inference.plausibility import Status, check_lungs
from inference.quantify import Bands, quantify
from inference.volume import build_volume
from pacs import changes
from pacs.config import Settings
from pacs.index.models import Instance, Series
from pacs.jobs import queue as jobs
from pacs.jobs.analysis import AnalysisRefused
from pacs.jobs.models import Job
from pacs.jobs.worker import Worker
from testkit.chest_phantom import Phantom, chest_phantom, dense_lung_base, phantom_series
from testkit.inference_helpers import Archive, FailingSegmenter, TruthSegmenter, open_archive
from tests.conftest import Backend
from tests.test_inference_results import dciodvfy_errors


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
    stages = {"read", "volume", "calibration", "predict", "plausibility", "quantify", "seg"}
    stages |= {"sr", "store", "record"}
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
    assert row["model_versions"] == {"lung-seg": "0.0.0-test", "lung-densitometry": "1.1"}
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
    with archive.engine.connect() as conn:  # the refusal is a result too: not assessable
        [row, _] = records.results_of_study(conn, study)
    assert row["study_version"] == 2 and row["sr_sop_instance_uid"] == ""
    assert row["measurements"]["assessment"] == "not_assessable"
    assert row["measurements"]["assessment_reason"] == "missing_slices"
    assert "ct_severity_grade" not in row["measurements"]


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


# ---------------------------------------------------------------- plausibility gates


def gated(
    archive: Archive, datasets: list[Dataset], lungs: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The analysis of ``datasets`` with a lung model that returns ``lungs``."""
    archive.store(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    segmenter = TruthSegmenter(lungs)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda settings: segmenter)
    return pipeline.analyse_ct_chest(archive.context(study, [series]))


def stored_sr(archive: Archive, sop_uid: str) -> hd.sr.Comprehensive3DSR:
    with archive.engine.connect() as conn:
        key = conn.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop_uid))
    assert key is not None
    return hd.sr.Comprehensive3DSR.from_dataset(dcmread(BytesIO(archive.ingest.store.get(key))))


def assessability(sr: hd.sr.Comprehensive3DSR) -> str:
    [lungs] = sr.content.get_image_measurement_groups()  # type: ignore[attr-defined]
    [evaluation] = lungs.get_qualitative_evaluations()
    return str(evaluation.value.value)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # pipeline logic only
def test_lung_bases_only_get_volumes_and_no_grade(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 10: 110 mL of lung bases got CT-2; a scan that cuts the lungs is partial."""
    # the scan ends in the middle of the lungs (slices go from the feet up): apex outside
    result = gated(archive, phantom_series(phantom)[:10], phantom.lungs[:10], monkeypatch)
    measurements = result.summary["measurements"]
    assert measurements["assessment"] == "partial_coverage"
    assert measurements["assessment_reason"] == "partial_coverage"
    assert "lung apex outside the scan" in measurements["assessment_detail"]
    assert measurements["right_lung_volume_ml"] > 0 and measurements["left_lung_volume_ml"] > 0
    for key in ("ct_severity_grade", "involvement_percent", "ground_glass_percent"):
        assert key not in measurements
    seg_uid, sr_uid = result.output_sop_instance_uids
    assert series_of(archive, seg_uid)[1] == 1
    sr = stored_sr(archive, sr_uid)
    assert assessability(sr) == "PARTIAL_COVERAGE"
    (tmp_path / "sr.dcm").write_bytes(results.encode(sr))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # pipeline logic only
def test_dense_disease_outside_one_lung_mask_withholds_the_grade(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 10: lung-seg leaves +35 HU consolidation outside the mask, so the grade fell as
    dense disease grew; half of the right lung dense gives volumes only, no grade."""
    dense, mask = dense_lung_base(chest_phantom(size=64, slices=20, seed=8), 1, 0.5)
    result = gated(archive, phantom_series(dense), mask, monkeypatch)
    measurements = result.summary["measurements"]
    assert measurements["assessment"] == "partial_coverage"
    assert measurements["assessment_reason"] == "lung_asymmetric"
    detail = measurements["assessment_detail"]
    assert detail.startswith("right lung 1.5 L vs left 2.9 L (smaller/larger 0.50")
    assert "dense disease, effusion or collapse may lie outside the lung mask" in detail
    assert measurements["right_lung_volume_ml"] < 0.6 * measurements["left_lung_volume_ml"]
    for key in ("ct_severity_grade", "involvement_percent", "consolidation_percent"):
        assert key not in measurements
    seg_uid, sr_uid = result.output_sop_instance_uids
    assert series_of(archive, seg_uid)[1] == 1
    sr = stored_sr(archive, sr_uid)
    assert assessability(sr) == "LUNG_ASYMMETRIC"
    (tmp_path / "sr.dcm").write_bytes(results.encode(sr))
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


@pytest.mark.parametrize("label", [1, 2])
def test_asymmetry_gate_fires_on_large_one_sided_dense_disease(label: int) -> None:
    """Without the gate the phantom grades CT-0 whatever the dense share (the lesion is not
    in the mask); with it, a large one-sided share gives no grade, a small one still does
    (under-measured: a known limit), and the symmetric phantom is graded."""
    settings = Settings()
    phantom = chest_phantom(size=64, slices=40, seed=8)
    for share, reason in ((0.0, None), (0.1, None), (0.5, RefusalReason.LUNG_ASYMMETRIC)):
        dense, mask = dense_lung_base(phantom, label, share)
        image = sitk.GetImageFromArray(dense.hu)
        image.SetSpacing(dense.spacing)
        labels = sitk.GetImageFromArray(mask)
        labels.CopyInformation(image)
        assessment = check_lungs(labels, settings)
        assert assessment.reason is reason, (share, assessment)
        if reason is not None:
            assert assessment.status is Status.PARTIAL_COVERAGE
            assert "smaller/larger 0.50, at least 0.70 expected" in assessment.detail
        assert quantify(image, labels, Bands()).ct_severity_grade == "CT-0"
    off = settings.model_copy(update={"inference_lung_asymmetry_min_ratio": 0.0})
    assert check_lungs(labels, off).complete


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_no_lung_is_not_assessable(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: an abdominal CT got "right lung 3.1 mL, 34 %, CT-2"."""
    lungs = np.zeros_like(phantom.lungs)
    lungs[8:10, 30:32, 10:12] = 1  # a few mL of "lung" in the middle of the scan
    result = gated(archive, phantom_series(phantom), lungs, monkeypatch)
    measurements = result.summary["measurements"]
    assert measurements["assessment"] == "not_assessable"
    assert measurements["assessment_reason"] == "no_lung"
    assert set(measurements) == {"assessment", "assessment_reason", "assessment_detail"}
    [sr_uid] = result.output_sop_instance_uids  # an SR saying so, no SEG
    assert assessability(stored_sr(archive, sr_uid)) == "NO_LUNG"
    with archive.engine.connect() as conn:
        [row] = records.results_of_study(conn, result_study(archive, sr_uid))
    assert row["seg_sop_instance_uid"] == "" and row["sr_sop_instance_uid"] == sr_uid


def result_study(archive: Archive, sop_uid: str) -> str:
    with archive.engine.connect() as conn:
        row = conn.execute(
            select(records.AI_RESULT.c.study_instance_uid).where(
                records.AI_RESULT.c.sr_sop_instance_uid == sop_uid
            )
        ).one()
    return str(row[0])


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_implausible_lung_volume_is_not_assessable(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = chest_phantom(size=64, slices=20, seed=3)
    datasets = phantom_series(small)
    for ds in datasets:  # a 10x smaller patient: about 570 mL of whole lungs
        ds.PixelSpacing = [float(v) / 10**0.5 for v in ds.PixelSpacing]
        ds.SliceThickness = float(ds.SliceThickness) / 10 ** (1 / 3)
    result = gated(archive, datasets, small.lungs, monkeypatch)
    measurements = result.summary["measurements"]
    assert measurements["assessment_reason"] == "lung_volume_implausible"
    assert "outside the adult range" in measurements["assessment_detail"]


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_miscalibrated_ct_is_refused_before_the_model(
    archive: Archive, phantom: Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = phantom_series(phantom)
    for ds in datasets:
        ds.RescaleIntercept = 0  # stored values (HU + 1024) read as HU: air at +24
    segmenter = TruthSegmenter(phantom.lungs)
    monkeypatch.setattr(pipeline, "lung_segmenter", lambda settings: segmenter)
    archive.store(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    result = pipeline.analyse_ct_chest(archive.context(study, [series]))
    measurements = result.summary["measurements"]
    assert measurements["assessment_reason"] == "miscalibrated"
    assert "air outside the body reads 24 HU" in measurements["assessment_detail"]
    assert segmenter.calls == 0


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_series_mixing_two_patients_is_refused_with_its_reason(
    archive: Archive, phantom: Phantom
) -> None:
    datasets = phantom_series(phantom)
    for ds in datasets[10:]:
        ds.PatientID = "PHANTOM-2"
    # the archive's own identity rules may refuse the second patient at ingest; the volume
    # check must refuse the mix wherever it comes from
    with pytest.raises(VolumeRefusedError) as caught:
        build_volume(datasets, archive.settings)
    assert caught.value.reason is RefusalReason.MIXED_PATIENT
    assert "PHANTOM" not in str(caught.value)  # never echoes an identifier
    other_frame = phantom_series(phantom)
    for ds in other_frame[:5]:
        ds.FrameOfReferenceUID = "1.2.3.4"
    with pytest.raises(VolumeRefusedError) as caught:
        build_volume(other_frame, archive.settings)
    assert caught.value.reason is RefusalReason.MIXED_FRAME_OF_REFERENCE


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_coronal_series_is_analysed_on_its_head_feet_axis(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coronal chest series: the coverage gate runs along the patient's head-feet axis,
    not along the series' slice axis, and the series gets a grade."""
    axial = chest_phantom(size=64, slices=20, involvement=0.3, seed=8)
    datasets, lungs = coronal_series(axial)
    result = gated(archive, datasets, lungs, monkeypatch)
    measurements = result.summary["measurements"]
    assert "assessment" not in measurements, measurements
    assert measurements["involvement_percent"] == pytest.approx(axial.involvement_percent, abs=5)
    assert measurements["ct_severity_grade"] == "CT-2"
    # the lower half of the same chest, coronal: the lungs reach the top of every slice
    bases = Phantom(axial.hu[:10], axial.lungs[:10], axial.spacing, 0.0, 0.0)
    measurements = gated(archive, *coronal_series(bases), monkeypatch).summary["measurements"]
    assert measurements["assessment"] == "partial_coverage"
    assert "lung apex outside the scan" in measurements["assessment_detail"]


def coronal_series(phantom: Phantom) -> tuple[list[Dataset], np.ndarray]:
    """The phantom resliced coronally (one slice per phantom row, anterior to posterior) and
    its lung labels in that slice order (z = row, y = superior to inferior, x)."""
    slices, rows, columns = phantom.hu.shape
    sx, sy, sz = phantom.spacing
    hu = np.ascontiguousarray(phantom.hu.transpose(1, 0, 2)[:, ::-1, :])
    lungs = np.ascontiguousarray(phantom.lungs.transpose(1, 0, 2)[:, ::-1, :])
    template = phantom_series(phantom)[0]
    datasets = []
    for k in range(rows):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = slices, columns
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # rows run to the feet
        top = -150.0 + (slices - 1) * sz
        ds.ImagePositionPatient = [-0.5 * columns * sx, -0.5 * rows * sy + k * sy, top]
        ds.PixelSpacing = [sz, sx]
        ds.SliceThickness = sy
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets, lungs
