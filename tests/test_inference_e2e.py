"""The CT analysis with the registered lung model, end to end.

- A synthetic chest CT C-STOREd with DCMTK ``storescu`` to a running archive becomes stable,
  the ``ct-chest`` job runs in the archive's worker, and the SEG and SR come back over WADO-RS
  (dicomweb-client) with the expected measurements (both deployments).
- The real JPEG 2000 CT of ../shared/data through the whole pipeline.
- A corrupted model file is refused by the registry and fails the analysis.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from inference import pipeline
from inference.registry import ModelRegistry, ModelRegistryError
from pacs.config import Settings
from testkit.chest_phantom import chest_phantom, phantom_series
from testkit.inference_helpers import Archive, open_archive
from tests.conftest import Backend, require, require_tool, start_archive, stop_archive
from tests.test_inference_results import dciodvfy_errors
from tests.test_inference_volume import real_ct_series

MODEL = Settings.model_validate({}).inference_lung_model  # PACS_INFERENCE_LUNG_MODEL: another


def lung_model_present() -> None:
    models = {entry.name for entry in ModelRegistry().list()}
    require(MODEL in models, f"the lung model {MODEL!r} is not registered in models/")


def wait_for_job(base: str, study: str, timeout: float = 120) -> dict[str, Any]:
    """The ct-chest job of ``study`` once it succeeded (fails on a dead job or a timeout)."""
    deadline = time.monotonic() + timeout
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = httpx.get(
            f"{base}/api/jobs", params={"study": study, "analysis": "ct-chest"}, timeout=10
        ).json()["jobs"]
        if jobs and jobs[0]["status"] == "succeeded":
            return jobs[0]
        if jobs and jobs[0]["status"] in ("dead", "cancelled"):
            pytest.fail(f"ct-chest job ended {jobs[0]['status']}: {jobs[0]['error']}")
        time.sleep(0.5)
    pytest.fail(f"no finished ct-chest job after {timeout} s: {jobs}")


def sr_measurements(sr: hd.sr.Comprehensive3DSR) -> dict[str, Any]:
    """The SR's values under the ``ai_result`` measurement names."""
    report: Any = sr.content
    values: dict[str, Any] = {}
    for group in report.get_volumetric_roi_measurement_groups():
        site = group.finding_sites[0].value.value
        key = "right_lung_volume_ml" if site == "3341006" else "left_lung_volume_ml"
        values[key] = group.get_measurements()[0].value
    [lungs] = report.get_image_measurement_groups()
    names = {
        "EI-LAA950": "emphysema_index_percent",
        "GGO-SHARE": "ground_glass_percent",
        "CONS-SHARE": "consolidation_percent",
        "INVOLVEMENT": "involvement_percent",
    }
    for measurement in lungs.get_measurements():
        values[names[measurement.name.value]] = measurement.value
    values["ct_severity_grade"] = lungs.get_qualitative_evaluations()[0].value.value
    return values


@pytest.mark.dcmtk
def test_c_store_to_seg_and_sr_over_wado_rs(backend: Backend, tmp_path: Path) -> None:
    lung_model_present()
    storescu = require_tool("storescu")
    # ground glass only: the shipped lung model leaves dense consolidation out of the lungs
    phantom = chest_phantom(size=128, slices=60, involvement=0.3, seed=11, consolidation=0)
    folder = tmp_path / "ct"
    folder.mkdir()
    datasets = phantom_series(phantom, shuffle_seed=5)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    study = str(datasets[0].StudyInstanceUID)
    archive = start_archive(backend, tmp_path / "serve.log", PACS_STABLE_AFTER_SECONDS="1")
    try:
        sent = subprocess.run(
            [storescu, "-aec", "PACS", "127.0.0.1", str(archive.dicom_port), "+sd", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        job = wait_for_job(archive.http, study)
        seg_uid, sr_uid = job["result"]["output_sop_instance_uids"]
        summary = job["result"]["summary"]
        client = DICOMwebClient(f"{archive.http}/dicomweb")
        by_modality = {
            s["00080060"]["Value"][0]: s["0020000E"]["Value"][0]
            for s in client.search_for_series(study)
        }
        assert set(by_modality) == {"CT", "SEG", "SR"}
        seg = hd.seg.Segmentation.from_dataset(
            client.retrieve_instance(study, by_modality["SEG"], seg_uid)
        )
        sr = hd.sr.Comprehensive3DSR.from_dataset(
            client.retrieve_instance(study, by_modality["SR"], sr_uid)
        )
    finally:
        stop_archive(archive)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence][:2] == ["Right lung", "Left lung"]
    assert sr.VerificationFlag == "UNVERIFIED"
    measured = sr_measurements(sr)
    expected = summary["measurements"]
    assert measured == pytest.approx(expected, abs=0.06)  # the SR carries the recorded values
    voxel_ml = float(np.prod(phantom.spacing)) / 1000
    for label, key in ((1, "right_lung_volume_ml"), (2, "left_lung_volume_ml")):
        truth = np.count_nonzero(phantom.lungs == label) * voxel_ml
        assert measured[key] == pytest.approx(truth, rel=0.15)
    assert measured["involvement_percent"] == pytest.approx(phantom.involvement_percent, abs=5)
    assert measured["ground_glass_percent"] == pytest.approx(phantom.involvement_percent, abs=5)
    assert measured["ct_severity_grade"] == "CT-2"
    assert summary["model_versions"][MODEL]


@pytest.fixture
def index(db_backend: Backend) -> Iterator[Archive]:
    """An index on SQLite: these tests are about the model and the data, which the database
    does not change (the pipeline tests run on both databases)."""
    yield from open_archive(db_backend.with_settings(inference_min_slices=10))


sqlite_only = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@sqlite_only
def test_real_jpeg2000_ct_through_the_pipeline(index: Archive, tmp_path: Path) -> None:
    lung_model_present()
    datasets = real_ct_series()
    index.store(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    result = pipeline.analyse_ct_chest(index.context(study, [series]))
    # upper abdomen, no lung in it (issue 10: it got "right lung 3.1 mL, 34 %, CT-2"): an SR
    # saying "not assessable", no SEG, no grade
    [sr_uid] = result.output_sop_instance_uids
    measurements = result.summary["measurements"]
    assert measurements["assessment"] == "not_assessable"
    assert measurements["assessment_reason"] == "no_lung"
    assert "ct_severity_grade" not in measurements
    path = tmp_path / f"{sr_uid}.dcm"
    path.write_bytes(stored_object(index, sr_uid))
    assert dciodvfy_errors(path) == []
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    [lungs] = sr.content.get_image_measurement_groups()  # type: ignore[attr-defined]
    assert lungs.get_qualitative_evaluations()[0].value.value == "NO_LUNG"


def stored_object(index: Archive, sop_uid: str) -> bytes:
    """The bytes of a stored instance, from the object store via the index."""
    from sqlalchemy import select

    from pacs.index.models import Instance

    with index.engine.connect() as conn:
        key = conn.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop_uid))
    assert key is not None
    return index.ingest.store.get(key)


@sqlite_only
def test_corrupted_model_file_is_refused(index: Archive, tmp_path: Path) -> None:
    lung_model_present()
    registry = ModelRegistry()
    # the version the pipeline loads: the pinned one, else the highest
    version = index.settings.inference_lung_model_version or registry.versions(MODEL)[-1]
    copy = tmp_path / "models"
    shutil.copytree(registry.root / MODEL, copy / MODEL)
    model_file = copy / MODEL / version / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    model_file.write_bytes(bytes(data))
    index.settings = index.settings.model_copy(update={"models_dir": copy})
    datasets = phantom_series(chest_phantom(size=32, slices=12))
    index.store(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    with pytest.raises(ModelRegistryError, match="refusing to load a changed or corrupted model"):
        pipeline.analyse_ct_chest(index.context(study, [series]))
