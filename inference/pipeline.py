"""The ``ct-chest`` analysis: chest CT -> lungs -> measurements -> DICOM SEG + SR -> archive.

Stages, each testable alone (MONAI Deploy's habit):

- ``pre_process``: choose the series among those the routing rules selected and build its
  volume (``inference.volume``); a series the volume checks refuse is skipped for the next.
- ``predict``: the calibration gate, the lung model from the registry
  (``inference.segmentation.LungSegmenter``), then the lung gates (``inference.plausibility``).
- ``post_process``: quantification, SEG + SR (``inference.results``), stored through the
  ingest path (overwrite policy: a re-run replaces its own objects), and the ``ai_result``
  row with its ``result.stored`` change.

No grade without every gate passed, and a stopped analysis is a result too: a series no
check accepts gives an ``ai_result`` row saying "not assessable: <reason>" (then
``AnalysisRefused``); a failed gate gives that row and an SR with the reason (and, for a
partial coverage or asymmetric lungs, the lung volumes and their SEG). Not-assessable
measurements hold ``assessment`` (``partial_coverage`` / ``not_assessable``),
``assessment_reason`` (the ``RefusalReason`` code) and ``assessment_detail``; a complete
result has none of them.

``ctx.heartbeat()`` runs between stages (it raises if an operator cancelled the job). Any
failure propagates, so the job is marked failed with the error and retried per its policy.
Logs carry the job id and stage timings, never patient identifiers.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import SimpleITK as sitk
from sqlalchemy import func, select

from inference import records, results
from inference.errors import (
    InferenceError,
    NoCandidateSeriesError,
    RefusalReason,
    VolumeRefusedError,
)
from inference.plausibility import COMPLETE, Assessment, Status, check_calibration, check_lungs
from inference.quantify import Bands, Quantification, quantify
from inference.registry import DEFAULT_MODELS_DIR, ModelRegistry
from inference.segmentation import LungSegmenter
from inference.volume import CT_SOP_CLASSES, Volume, build_volume, read_series
from pacs.config import DuplicatePolicy, Settings
from pacs.index.models import Instance, Series
from pacs.jobs.analysis import AnalysisContext, AnalysisRefused, AnalysisResult

log = logging.getLogger(__name__)

ANALYSIS = "ct-chest"


class ResultStoreError(InferenceError):
    """The archive refused a SEG or SR the analysis produced."""


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 3)


def analyse_ct_chest(ctx: AnalysisContext) -> AnalysisResult:
    """Analyse the chest CT of one study version; store SEG + SR and the ``ai_result`` row.

    A study version whose result is signed off is refused: the sign-off is final for it."""
    if records.signed_off(ctx.engine, ctx.study_instance_uid, ctx.study_version, ctx.analysis):
        raise AnalysisRefused(
            f"{ANALYSIS}: study version {ctx.study_version} is signed off; its result is kept"
        )
    timings: dict[str, float] = {}
    try:
        volume = pre_process(ctx, timings)
    except (VolumeRefusedError, NoCandidateSeriesError) as exc:  # a retry cannot change it
        record_refusal(ctx, exc)
        raise AnalysisRefused(f"{ANALYSIS}: {exc}") from exc
    ctx.heartbeat()
    segmenter = lung_segmenter(ctx.settings)
    with _stage(timings, "calibration"):
        assessment = check_calibration(volume.image, ctx.settings)
    lungs = None
    if assessment.complete:
        with _stage(timings, "predict"):
            lungs = predict(volume, segmenter)
        with _stage(timings, "plausibility"):
            assessment = check_lungs(lungs, ctx.settings)
    ctx.heartbeat()
    result = post_process(ctx, volume, lungs, model_versions(segmenter), timings, assessment)
    result.summary["timings_s"] = timings
    log.info(
        "job %s: %s on %d slices (%s) in %s s",
        ctx.job_id,
        ANALYSIS,
        volume.image.GetSize()[2],
        assessment.status.value,
        timings,
    )
    return result


def not_assessable_measurements(assessment: Assessment) -> dict[str, Any]:
    """The ``ai_result`` keys of an incomplete assessment."""
    return {
        "assessment": assessment.status.value,
        "assessment_reason": assessment.reason.value if assessment.reason else "",
        "assessment_detail": assessment.detail,
    }


def record_refusal(ctx: AnalysisContext, exc: VolumeRefusedError | NoCandidateSeriesError) -> int:
    """The ``ai_result`` row of a study whose series no check accepts: not assessable, no
    SEG or SR (there is no volume to derive them from)."""
    if isinstance(exc, VolumeRefusedError):
        assessment = Assessment(Status.NOT_ASSESSABLE, exc.reason, exc.detail)
    else:
        assessment = Assessment(Status.NOT_ASSESSABLE, RefusalReason.NOT_CT, str(exc))
    series = ctx.series_instance_uids[0] if ctx.series_instance_uids else ""
    return records.store_result(
        ctx.engine,
        records.ResultRecord(
            study_instance_uid=ctx.study_instance_uid,
            study_version=ctx.study_version,
            analysis=ctx.analysis,
            source_series_instance_uid=series,
            model_versions={results.QUANTIFICATION: results.QUANTIFICATION_VERSION},
            measurements=not_assessable_measurements(assessment),
            seg_sop_instance_uid="",
            seg_series_instance_uid="",
            sr_sop_instance_uid="",
            sr_series_instance_uid="",
        ),
    )


# ---------------------------------------------------------------- pre_process


def candidate_series(ctx: AnalysisContext) -> list[str]:
    """The selected series that hold CT images, most slices (frames) first."""
    if not ctx.series_instance_uids:
        return []
    with ctx.engine.connect() as conn:
        rows = list(
            conn.execute(
                select(
                    Series.series_instance_uid,
                    func.sum(func.coalesce(Instance.number_of_frames, 1)),
                )
                .join(Instance, Instance.series_pk == Series.pk)
                .where(Series.series_instance_uid.in_(ctx.series_instance_uids))
                .where(Instance.sop_class_uid.in_(sorted(CT_SOP_CLASSES)))
                .group_by(Series.series_instance_uid)
            ).all()
        )
    rows.sort(key=lambda row: (-row[1], ctx.series_instance_uids.index(row[0])))
    return [row[0] for row in rows]


def pre_process(ctx: AnalysisContext, timings: dict[str, float] | None = None) -> Volume:
    """The volume of the first candidate series the volume checks accept."""
    timings = {} if timings is None else timings
    refusals: list[VolumeRefusedError] = []
    for series_uid in candidate_series(ctx):
        try:
            with _stage(timings, "read"):
                datasets = read_series(ctx.engine, ctx.store, series_uid)
            with _stage(timings, "volume"):
                return build_volume(datasets, ctx.settings)
        except VolumeRefusedError as exc:
            log.warning("job %s: series skipped: %s", ctx.job_id, exc)
            refusals.append(exc)
        ctx.heartbeat()
    if refusals:
        raise refusals[0]
    raise NoCandidateSeriesError(f"no CT series among the {len(ctx.series_instance_uids)} selected")


# ---------------------------------------------------------------- predict


def lung_segmenter(settings: Settings) -> LungSegmenter:
    """The configured lung model, from the model registry (digest verified on load)."""
    registry = ModelRegistry(settings.models_dir or DEFAULT_MODELS_DIR, settings.inference_threads)
    return LungSegmenter(
        registry,
        name=settings.inference_lung_model,
        version=settings.inference_lung_model_version,
    )


def predict(volume: Volume, segmenter: LungSegmenter) -> sitk.Image:
    """Lung labels (1 right, 2 left) on the volume's grid."""
    labels = segmenter.segment(volume.image)
    if labels.GetSize() != volume.image.GetSize():
        raise InferenceError(f"lung model returned {labels.GetSize()} for {volume.image.GetSize()}")
    return labels


def model_versions(segmenter: LungSegmenter) -> dict[str, str]:
    """Name -> version of every algorithm behind the result (part of the result UIDs)."""
    manifest = segmenter.manifest
    return {
        str(manifest.name): str(manifest.version),
        results.QUANTIFICATION: results.QUANTIFICATION_VERSION,
    }


# ---------------------------------------------------------------- post_process


def post_process(
    ctx: AnalysisContext,
    volume: Volume,
    lungs: sitk.Image | None,
    versions: dict[str, str],
    timings: dict[str, float] | None = None,
    assessment: Assessment = COMPLETE,
) -> AnalysisResult:
    """Quantify, build and store SEG + SR, record the result (lungs: None when the
    calibration gate stopped the analysis before the model)."""
    from pacs.jobs.analysis import AnalysisResult

    timings = {} if timings is None else timings
    quantification: Quantification | None = None
    if lungs is not None and assessment.status is not Status.NOT_ASSESSABLE:
        with _stage(timings, "quantify"):
            quantification = quantify(volume.image, lungs, Bands.from_settings(ctx.settings))
        if not assessment.complete:
            quantification.findings[:] = 0  # volumes only
    uids = results.result_uids(ctx.study_instance_uid, ctx.study_version, ctx.analysis, versions)
    segmentation = None
    if quantification is not None and lungs is not None:
        labels = sitk.GetArrayViewFromImage(lungs)
        with _stage(timings, "seg"):
            segmentation = results.build_segmentation(
                volume, labels, quantification, uids, versions
            )
        ctx.heartbeat()
    with _stage(timings, "sr"):
        report = results.build_report(
            volume, segmentation, quantification, uids, versions, assessment
        )
    ingest = copy.copy(ctx.ingest)  # same store and engine; results replace their own UIDs
    ingest.duplicate_policy = DuplicatePolicy.OVERWRITE
    stored = [dataset for dataset in (segmentation, report) if dataset is not None]
    with _stage(timings, "store"):
        for dataset in stored:
            outcome = ingest.store_part10(results.encode(dataset), ctx.source)
            if not outcome.status.ok:
                kind = dataset.Modality
                raise ResultStoreError(f"{kind} refused: {outcome.status} {outcome.reason}")
    measurements = _measurements(quantification, assessment)
    seg_uids = (uids.seg_instance, uids.seg_series) if segmentation is not None else ("", "")
    with _stage(timings, "record"):
        pk = records.store_result(
            ctx.engine,
            records.ResultRecord(
                study_instance_uid=ctx.study_instance_uid,
                study_version=ctx.study_version,
                analysis=ctx.analysis,
                source_series_instance_uid=volume.series_instance_uid,
                model_versions=versions,
                measurements=measurements,
                seg_sop_instance_uid=seg_uids[0],
                seg_series_instance_uid=seg_uids[1],
                sr_sop_instance_uid=uids.sr_instance,
                sr_series_instance_uid=uids.sr_series,
            ),
        )
    return AnalysisResult(
        output_sop_instance_uids=[str(dataset.SOPInstanceUID) for dataset in stored],
        summary={
            "result_pk": pk,
            "source_series_instance_uid": volume.series_instance_uid,
            "model_versions": versions,
            "measurements": measurements,
        },
    )


def _measurements(quantification: Quantification | None, assessment: Assessment) -> dict[str, Any]:
    """All measurements of a complete result; the volumes of a partial one; the reason."""
    if assessment.complete and quantification is not None:
        return quantification.measurements()
    measured = quantification.measurements() if quantification is not None else {}
    volumes = {k: v for k, v in measured.items() if k.endswith("_lung_volume_ml")}
    return volumes | not_assessable_measurements(assessment)
