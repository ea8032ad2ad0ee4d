"""AI results as DICOM: a Segmentation (lungs, ground glass, consolidation) and a TID 1500 SR.

Both objects are built with highdicom, reference the source CT series, and carry UIDs derived
from (study UID, study version, analysis, model versions): running the same analysis again on
the same study version produces the same SOP Instance UIDs, which replace the stored objects
instead of adding new ones. The SR is UNVERIFIED and not final: a radiologist signs it off.

An analysis the plausibility gates stopped (``inference.plausibility``) still gets an SR: its
lung group says "not assessable" with the reason as a coded value, with the lung volumes when
the coverage was partial (and a SEG of the lungs), without shares and grade.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference.errors import RefusalReason
from inference.plausibility import COMPLETE, Assessment
from inference.quantify import CONSOLIDATION, GROUND_GLASS, LEFT_LUNG, RIGHT_LUNG, Quantification
from inference.volume import Volume
from pacs.ingest.derived import ARCHIVE_MANUFACTURER

DEVICE_NAME = "PACS CT chest analysis"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9001, 9002
QUANTIFICATION = "lung-densitometry"  # the density-band method of inference.quantify
QUANTIFICATION_VERSION = "1.1"

_SCHEME = "99PACS"  # private coding scheme for concepts no standard vocabulary has
ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
RIGHT_LUNG_CODE = Code("3341006", "SCT", "Right lung")
LEFT_LUNG_CODE = Code("44029006", "SCT", "Left lung")
LUNG_CODE = Code("39607008", "SCT", "Lung")
GROUND_GLASS_CODE = Code("112120", "DCM", "Ground glass opacity")
CONSOLIDATION_CODE = Code("95436008", "SCT", "Lung consolidation")
VOLUME_CODE = Code("118565006", "SCT", "Volume")
SEVERITY_CODE = Code("246112005", "SCT", "Severity")
CT_CHEST_CODE = Code("24627-2", "LN", "CT Chest")
MILLILITER = Code("mL", "UCUM", "milliliter")
PERCENT = Code("%", "UCUM", "percent")
EMPHYSEMA_INDEX_CODE = Code("EI-LAA950", _SCHEME, "Emphysema index (LAA-950)")
GGO_SHARE_CODE = Code("GGO-SHARE", _SCHEME, "Ground glass share of lung parenchyma")
CONSOLIDATION_SHARE_CODE = Code("CONS-SHARE", _SCHEME, "Consolidation share of lung parenchyma")
INVOLVEMENT_CODE = Code("INVOLVEMENT", _SCHEME, "Lung involvement")
ASSESSABILITY_CODE = Code("ASSESSABILITY", _SCHEME, "Assessability of the lungs")
NOT_ASSESSABLE_CODES = {  # the plausibility gates' reasons (CodeValue: at most 16 characters)
    RefusalReason.MISCALIBRATED: Code("MISCALIBRATED", _SCHEME, "Not assessable: miscalibrated"),
    RefusalReason.NO_LUNG: Code("NO_LUNG", _SCHEME, "Not assessable: no lung in the scan"),
    RefusalReason.LUNG_VOLUME_IMPLAUSIBLE: Code(
        "LUNG_VOLUME", _SCHEME, "Not assessable: lung volume outside the adult range"
    ),
    RefusalReason.PARTIAL_COVERAGE: Code(
        "PARTIAL_COVERAGE", _SCHEME, "Not assessable: partial coverage of the lungs"
    ),
    RefusalReason.LUNG_ASYMMETRIC: Code(
        "LUNG_ASYMMETRIC", _SCHEME, "Not assessable: lung volumes asymmetric"
    ),
}
GRADE_CODES = {
    "CT-0": Code("CT-0", _SCHEME, "CT-0 no involvement"),
    "CT-1": Code("CT-1", _SCHEME, "CT-1 involvement below 25 %"),
    "CT-2": Code("CT-2", _SCHEME, "CT-2 involvement 25-50 %"),
    "CT-3": Code("CT-3", _SCHEME, "CT-3 involvement 50-75 %"),
    "CT-4": Code("CT-4", _SCHEME, "CT-4 involvement 75 % or more"),
}


@dataclass(frozen=True, slots=True)
class ResultUids:
    """The four UIDs of one analysis result (same inputs, same UIDs)."""

    seg_series: str
    seg_instance: str
    sr_series: str
    sr_instance: str


_UID_NAMESPACE = uuid.UUID("5c0a9a3e-7f1e-4c59-9a52-1f0c2c1e7a11")  # of this archive's results


def derived_uid(*parts: str) -> str:
    """A ``2.25`` UID from a name-based UUID (version 5) of ``parts``: same parts, same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def result_uids(
    study_instance_uid: str, study_version: int, analysis: str, model_versions: dict[str, str]
) -> ResultUids:
    """Deterministic ``2.25.x`` UIDs of the SEG and SR of one analysis of one study version."""
    models = json.dumps(model_versions, sort_keys=True)

    def uid(role: str) -> str:
        return derived_uid(study_instance_uid, str(study_version), analysis, models, role)

    return ResultUids(uid("seg-series"), uid("seg"), uid("sr-series"), uid("sr"))


def _algorithm(name: str, version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=name, family=codes.DCM.ArtificialIntelligence, version=version
    )


def build_segmentation(
    volume: Volume,
    lungs: np.ndarray,
    quantification: Quantification,
    uids: ResultUids,
    model_versions: dict[str, str],
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of the source series: right lung, left lung, ground glass, consolidation.

    ``lungs`` is the (z, y, x) label array of the lung model (1 right, 2 left), in the
    volume's slice order. Empty frames are omitted.
    """
    (lung_model, lung_version), *_ = (
        (n, v) for n, v in model_versions.items() if n != QUANTIFICATION
    )
    lung_algorithm = _algorithm(lung_model, lung_version)
    bands = _algorithm(QUANTIFICATION, QUANTIFICATION_VERSION)
    automatic = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    segments = [
        (RIGHT_LUNG_CODE, ANATOMICAL_STRUCTURE, "Right lung", lung_algorithm),
        (LEFT_LUNG_CODE, ANATOMICAL_STRUCTURE, "Left lung", lung_algorithm),
        (GROUND_GLASS_CODE, ABNORMAL_STRUCTURE, "Ground glass", bands),
        (CONSOLIDATION_CODE, ABNORMAL_STRUCTURE, "Consolidation", bands),
    ]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=prop,
            algorithm_type=automatic,
            algorithm_identification=algorithm,
            tracking_uid=derived_uid(uids.seg_instance, label),
            tracking_id=label,
        )
        for number, (prop, category, label, algorithm) in enumerate(segments, start=1)
    ]
    # segments first in memory, then viewed as (frames, rows, columns, segments): stacking and
    # highdicom's per-pixel sum over segments (its overlap check) run over contiguous planes
    masks = np.moveaxis(
        np.stack(
            [
                lungs == RIGHT_LUNG,
                lungs == LEFT_LUNG,
                quantification.findings == GROUND_GLASS,
                quantification.findings == CONSOLIDATION,
            ]
        ),
        0,
        -1,
    )
    source_images, masks = _source_order(volume, masks)
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=ARCHIVE_MANUFACTURER,
        manufacturer_model_name=DEVICE_NAME,
        software_versions=list(_software_versions(model_versions)),  # type: ignore[arg-type]
        device_serial_number="1",
        series_description="AI lung segmentation (unverified)",
        content_description="Lungs, ground glass and consolidation",
        content_label="LUNG_AI",
        omit_empty_frames=True,
    )


def _source_order(volume: Volume, masks: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """Source images and mask frames in the order highdicom pairs them.

    Single-frame sources: one image per slice, in slice order. A multi-frame source: its
    frames are in stored order, so the masks are put back into that order.
    """
    if len(volume.datasets) == 1 and len(volume.frames) > 1:
        order = np.argsort([frame.frame for frame in volume.frames])
        return volume.datasets, masks[order]
    return [volume.datasets[frame.dataset] for frame in volume.frames], masks


def _software_versions(model_versions: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{name} {version}"[:64] for name, version in sorted(model_versions.items()))


def build_report(
    volume: Volume,
    segmentation: hd.seg.Segmentation | None,
    quantification: Quantification | None,
    uids: ResultUids,
    model_versions: dict[str, str],
    assessment: Assessment = COMPLETE,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Imaging Measurement Report of the quantification, unverified.

    Lung volumes need the SEG and the quantification; shares and grade only come with a
    complete assessment, otherwise the lung group holds the "not assessable" reason."""
    algorithms = {
        name: hd.sr.AlgorithmIdentification(name=name, version=version)
        for name, version in model_versions.items()
    }
    bands = algorithms[QUANTIFICATION]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(DEVICE_NAME),
            name=DEVICE_NAME,
            manufacturer_name=ARCHIVE_MANUFACTURER,
            model_name=" ".join(_software_versions(model_versions))[:64],
        ),
    )
    groups: list[Any] = []
    if segmentation is not None and quantification is not None:
        groups.extend(_volume_groups(volume, segmentation, quantification, uids, algorithms))
    measurements: list[hd.sr.Measurement] = []
    if assessment.complete and quantification is not None:
        percentages = [
            (EMPHYSEMA_INDEX_CODE, quantification.emphysema_index_percent),
            (GGO_SHARE_CODE, quantification.ground_glass_percent),
            (CONSOLIDATION_SHARE_CODE, quantification.consolidation_percent),
            (INVOLVEMENT_CODE, quantification.involvement_percent),
        ]
        measurements = [
            hd.sr.Measurement(name=name, value=round(float(value), 2), unit=PERCENT)
            for name, value in percentages
        ]
        evaluation = hd.sr.QualitativeEvaluation(
            name=SEVERITY_CODE, value=GRADE_CODES[quantification.ct_severity_grade]
        )
    else:
        reason = assessment.reason or RefusalReason.NO_LUNG
        evaluation = hd.sr.QualitativeEvaluation(
            name=ASSESSABILITY_CODE, value=NOT_ASSESSABLE_CODES[reason]
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(uids.sr_instance, "lungs"),
                identifier="Both lungs",
            ),
            finding_type=LUNG_CODE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG_CODE)],
            algorithm_id=bands,
            measurements=measurements or None,
            qualitative_evaluations=[evaluation],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CT_CHEST_CODE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = [segmentation] if segmentation is not None else _source_images(volume)
    report_document = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=ARCHIVE_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="AI lung quantification (unverified)",
    )
    scheme = Dataset()  # declares the private coding scheme the percentages and grade use
    scheme.CodingSchemeDesignator = _SCHEME
    scheme.CodingSchemeName = "PACS regional archive AI concepts"
    scheme.CodingSchemeResponsibleOrganization = ARCHIVE_MANUFACTURER
    report_document.CodingSchemeIdentificationSequence = [scheme]
    return report_document


def _volume_groups(
    volume: Volume,
    segmentation: hd.seg.Segmentation,
    quantification: Quantification,
    uids: ResultUids,
    algorithms: dict[str, hd.sr.AlgorithmIdentification],
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The right and left lung groups: each lung segment with its volume."""
    lung_model = next(name for name in algorithms if name != QUANTIFICATION)
    # the segment applies to the whole source series: referenced as a series, not per image
    source_series = hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid)
    return [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(uids.sr_instance, label),
                identifier=label,
            ),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=number,
                source_series=source_series,
            ),
            finding_type=LUNG_CODE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=site)],
            algorithm_id=algorithms[lung_model],
            measurements=[
                hd.sr.Measurement(
                    name=VOLUME_CODE,
                    value=round(value, 1),
                    unit=MILLILITER,
                    algorithm_id=algorithms[QUANTIFICATION],
                )
            ],
        )
        for number, label, site, value in (
            (1, "Right lung", RIGHT_LUNG_CODE, quantification.right_lung_volume_ml),
            (2, "Left lung", LEFT_LUNG_CODE, quantification.left_lung_volume_ml),
        )
    ]


def _source_images(volume: Volume) -> list[Dataset]:
    """The source objects of the volume, each once (the SR's evidence without a SEG)."""
    return list({id(ds): ds for ds in volume.datasets}.values())


def encode(dataset: Dataset) -> bytes:
    """A highdicom object as Part-10 bytes (preamble, file meta, data set)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
