"""SEG and SR: conformance (dciodvfy), read back with highdicom, measurements, UIDs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from inference import results
from inference.quantify import Bands, Quantification, quantify
from inference.volume import Volume, build_volume
from pacs.config import Settings
from testkit.chest_phantom import chest_phantom, phantom_series
from tests.conftest import require_tool
from tests.test_inference_volume import enhanced_ct

VERSIONS = {"lung-seg": "1.0.0", results.QUANTIFICATION: results.QUANTIFICATION_VERSION}
SETTINGS = Settings.model_validate({"inference_min_slices": 10})


def analysed(volume: Volume, lungs: np.ndarray) -> tuple[Quantification, results.ResultUids]:
    label_image = sitk.GetImageFromArray(lungs)
    label_image.CopyInformation(volume.image)
    quantification = quantify(volume.image, label_image, Bands())
    uids = results.result_uids(volume.study_instance_uid, 3, "ct-chest", VERSIONS)
    return quantification, uids


@pytest.fixture(scope="module")
def phantom_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, Quantification, results.ResultUids, Volume]:
    phantom = chest_phantom(size=64, slices=24, involvement=0.3, seed=1)
    volume = build_volume(phantom_series(phantom, shuffle_seed=2), SETTINGS)
    quantification, uids = analysed(volume, phantom.lungs)
    seg = results.build_segmentation(volume, phantom.lungs, quantification, uids, VERSIONS)
    sr = results.build_report(volume, seg, quantification, uids, VERSIONS)
    folder = tmp_path_factory.mktemp("results")
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    seg_path.write_bytes(results.encode(seg))
    sr_path.write_bytes(results.encode(sr))
    return seg_path, sr_path, quantification, uids, volume


def dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_seg_and_sr_pass_dciodvfy(phantom_results: tuple) -> None:
    seg_path, sr_path, *_ = phantom_results
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []


def test_seg_reads_back_with_segments_and_references(phantom_results: tuple) -> None:
    seg_path, _, quantification, uids, volume = phantom_results
    seg = hd.seg.segread(seg_path)
    assert seg.SOPInstanceUID == uids.seg_instance
    assert seg.SeriesInstanceUID == uids.seg_series
    assert seg.StudyInstanceUID == volume.study_instance_uid
    assert seg.SegmentationType == "BINARY"
    labels = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(labels) == ["Right lung", "Left lung", "Ground glass", "Consolidation"]
    assert labels["Right lung"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "3341006"
    assert labels["Left lung"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"
    assert labels["Consolidation"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "95436008"
    category = labels["Ground glass"].SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
    algorithm = labels["Right lung"].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lung-seg", "1.0.0")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    # the stored masks are the masks: right lung frames back in the volume's slice order
    source_uids = [volume.datasets[f.dataset].SOPInstanceUID for f in volume.frames]
    right = seg.get_pixels_by_source_instance(source_uids, segment_numbers=[1, 3])
    phantom = chest_phantom(size=64, slices=24, involvement=0.3, seed=1)
    assert np.array_equal(right[..., 0], phantom.lungs == 1)
    assert np.array_equal(right[..., 1], quantification.findings == 1)


def test_sr_reads_back_with_measurements(phantom_results: tuple) -> None:
    _, sr_path, quantification, uids, _ = phantom_results
    sr = hd.sr.srread(sr_path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99PACS"
    assert sr.SOPInstanceUID == uids.sr_instance
    report: Any = sr.content  # a MeasurementReport (TID 1500)
    volumes = report.get_volumetric_roi_measurement_groups()
    assert len(volumes) == 2
    by_site = {}
    for group in volumes:
        [measurement] = group.get_measurements()
        assert measurement.unit.value == "mL"
        assert group.referenced_segment.referenced_sop_instance_uid == uids.seg_instance
        by_site[group.finding_sites[0].value.value] = measurement.value
    assert by_site["3341006"] == pytest.approx(quantification.right_lung_volume_ml, abs=0.05)
    assert by_site["44029006"] == pytest.approx(quantification.left_lung_volume_ml, abs=0.05)
    [lungs] = report.get_image_measurement_groups()
    percents = {m.name.value: m.value for m in lungs.get_measurements()}
    assert {m.unit.value for m in lungs.get_measurements()} == {"%"}
    assert percents["INVOLVEMENT"] == pytest.approx(quantification.involvement_percent, abs=0.01)
    assert percents["GGO-SHARE"] == pytest.approx(quantification.ground_glass_percent, abs=0.01)
    assert percents["EI-LAA950"] == pytest.approx(quantification.emphysema_index_percent, abs=0.01)
    [grade] = lungs.get_qualitative_evaluations()
    assert grade.value.value == quantification.ct_severity_grade == "CT-2"
    observer = report[0].ContentSequence
    assert any(
        getattr(item, "TextValue", "") == results.DEVICE_NAME for item in observer
    )  # device observer name (TID 1004)


def test_uids_are_deterministic_and_version_specific() -> None:
    first = results.result_uids("1.2.3", 1, "ct-chest", VERSIONS)
    assert first == results.result_uids("1.2.3", 1, "ct-chest", dict(reversed(VERSIONS.items())))
    assert first.seg_instance.startswith("2.25.")
    assert len({first.seg_series, first.seg_instance, first.sr_series, first.sr_instance}) == 4
    assert results.result_uids("1.2.3", 2, "ct-chest", VERSIONS) != first
    assert results.result_uids("1.2.3", 1, "ct-chest", {**VERSIONS, "lung-seg": "2"}) != first


def test_seg_of_an_enhanced_multiframe_ct(tmp_path: Path) -> None:
    phantom = chest_phantom(size=32, slices=12, involvement=0.2, seed=6)
    ct: Dataset = enhanced_ct(phantom.hu, reverse=True)
    volume = build_volume([ct], SETTINGS)
    quantification, uids = analysed(volume, phantom.lungs)
    seg = results.build_segmentation(volume, phantom.lungs, quantification, uids, VERSIONS)
    path = tmp_path / "seg.dcm"
    path.write_bytes(results.encode(seg))
    assert dciodvfy_errors(path) == []
    back = hd.seg.segread(path)
    frames = back.get_pixels_by_source_frame(
        ct.SOPInstanceUID, source_frame_numbers=[12], segment_numbers=[1]
    )
    assert np.array_equal(frames[0, ..., 0], phantom.lungs[0] == 1)  # stored frame 12 = z 0
