"""A small archive content for query tests (C-FIND and QIDO-RS): four patients, Latin and
Cyrillic names (UTF-8 and ISO_IR 144), CT and MR series, SQL metacharacters in values."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from testkit.dicom_factory import ct_slice


@dataclass
class QueryCorpus:
    """UIDs of what the corpus holds, and its objects in storage order."""

    smith: str = field(default_factory=generate_uid)  # Smith^John, CT (2) + MR (1)
    smith2: str = field(default_factory=generate_uid)  # Smith^John, CT (1)
    ivanov: str = field(default_factory=generate_uid)  # Иванов^Иван (UTF-8), CT
    petrova: str = field(default_factory=generate_uid)  # Петрова^Анна (ISO_IR 144), MR
    smith_ct: str = field(default_factory=generate_uid)
    smith_mr: str = field(default_factory=generate_uid)
    objects: list[Dataset] = field(default_factory=list)

    @property
    def studies(self) -> list[str]:
        """Study UIDs in storage order (which is the archive's primary key order)."""
        return [self.smith, self.smith2, self.ivanov, self.petrova]


def _object(study: str, series: str, index: int, **attributes: object) -> Dataset:
    ds = ct_slice(study, series, index, size=8)
    if attributes.get("Modality") == "MR":
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def build_corpus() -> QueryCorpus:
    """The corpus's datasets (not stored yet)."""
    c = QueryCorpus()
    smith = {"PatientName": "Smith^John", "PatientID": "US-1"}
    c.objects = [
        _object(c.smith, c.smith_ct, 0, **smith, StudyDate="20260110", AccessionNumber="A-1"),
        _object(c.smith, c.smith_ct, 1, **smith, StudyDate="20260110", AccessionNumber="A-1"),
        _object(
            c.smith,
            c.smith_mr,
            0,
            **smith,
            StudyDate="20260110",
            AccessionNumber="A-1",
            Modality="MR",
            SeriesNumber=2,
        ),
        _object(
            c.smith2,
            generate_uid(),
            0,
            **smith,
            StudyDate="20251201",
            AccessionNumber="A%_1",
            StudyDescription="x'; DROP TABLE study; --",
        ),
        _object(
            c.ivanov,
            generate_uid(),
            0,
            SpecificCharacterSet="ISO_IR 192",
            PatientName="Иванов^Иван",
            PatientID="RU-1",
            StudyDate="20240301",
            AccessionNumber="B-1",
        ),
        _object(
            c.petrova,
            generate_uid(),
            0,
            SpecificCharacterSet="ISO_IR 144",
            PatientName="Петрова^Анна",
            PatientID="RU-2",
            StudyDate="20230615",
            AccessionNumber="B-2",
            Modality="MR",
        ),
    ]
    return c


def part10(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 file (its own character set)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
