"""The CT analysis package's exception hierarchy: one base class for ``inference``."""

from __future__ import annotations

from enum import StrEnum


class InferenceError(Exception):
    """Base class of every error raised by the analysis pipeline."""


class NoCandidateSeriesError(InferenceError):
    """None of the series chosen for the analysis holds CT images."""


class RefusalReason(StrEnum):
    """Why a series cannot become a volume (the ``reason`` code of ``VolumeRefusedError``), or
    why its analysis is not assessable (``inference.plausibility``)."""

    EMPTY = "empty"  # no stored instance in the series
    NOT_CT = "not_ct"  # modality / SOP class is not CT
    UNDECODABLE = "undecodable"  # pixel data in a transfer syntax nothing here decodes
    MISSING_GEOMETRY = "missing_geometry"  # no ImagePositionPatient / orientation / spacing
    LOCALIZER = "localizer"  # ImageType LOCALIZER (scout) in the series
    INCONSISTENT_MATRIX = "inconsistent_matrix"  # Rows/Columns/PixelSpacing differ
    MIXED_ORIENTATION = "mixed_orientation"  # ImageOrientationPatient differs between slices
    TOO_FEW_SLICES = "too_few_slices"  # fewer slices than the configured minimum
    DUPLICATE_SLICES = "duplicate_slices"  # two slices at the same position
    MISSING_SLICES = "missing_slices"  # a gap: a step is a multiple of the usual spacing
    NON_UNIFORM_SPACING = "non_uniform_spacing"  # steps differ beyond the tolerance
    GANTRY_TILT = "gantry_tilt"  # positions do not advance along the slice normal
    MIXED_PATIENT = "mixed_patient"  # PatientID (and issuer) differ between objects
    MIXED_STUDY = "mixed_study"  # StudyInstanceUID differs between objects
    MIXED_SERIES = "mixed_series"  # SeriesInstanceUID differs between objects
    MIXED_FRAME_OF_REFERENCE = "mixed_frame_of_reference"  # two FrameOfReferenceUIDs
    # plausibility of the volume and of the lungs found (no grade is given)
    MISCALIBRATED = "miscalibrated"  # air outside the body is not near -1000 HU
    NO_LUNG = "no_lung"  # (almost) no lung in the scan
    LUNG_VOLUME_IMPLAUSIBLE = "lung_volume_implausible"  # outside the adult range
    PARTIAL_COVERAGE = "partial_coverage"  # lung apex or base outside the scan: volumes only
    LUNG_ASYMMETRIC = "lung_asymmetric"  # one lung much smaller: volumes only


class VolumeRefusedError(InferenceError, ValueError):
    """A series that the pipeline refuses to turn into a volume, with a precise reason."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
