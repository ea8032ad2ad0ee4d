"""The query matching module (PS3.4 C.2.2.2) on both databases, without any network."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from sqlalchemy.orm import Session

from pacs.index.engine import create_index_engine, session_factory
from pacs.ingest import Source, StoreStatus
from pacs.query import QueryError, QueryModel, find
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend

STUDY_ROOT = QueryModel.STUDY_ROOT
PATIENT_ROOT = QueryModel.PATIENT_ROOT


@dataclass
class Corpus:
    """The UIDs of the studies stored for the tests."""

    cyrillic: str
    smith: str
    smith2: str
    obrien: str
    smith_series: list[str]


def _object(study: str, series: str, **attributes: object) -> bytes:
    ds = ct_slice(study, series, 0, size=8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def corpus(db_backend: Backend) -> Corpus:
    """Three patients: a Cyrillic name, Smith (two studies, CT + MR), O'Brien."""
    ingest = build_ingest(db_backend.settings)
    source = Source(channel="import")
    cyrillic, smith, smith2, obrien = (generate_uid() for _ in range(4))
    ct_series, mr_series = generate_uid(), generate_uid()
    objects = [
        _object(
            cyrillic,
            generate_uid(),
            SpecificCharacterSet="ISO_IR 192",
            PatientName="Иванов^Иван",
            PatientID="RU-1",
            StudyDate="20260110",
            AccessionNumber="A%_1",
            StudyDescription="x!y 50%",
        ),
        _object(
            smith, ct_series, PatientName="Smith^John", PatientID="US-1", AccessionNumber="AX_1"
        ),
        _object(
            smith, ct_series, PatientName="Smith^John", PatientID="US-1", AccessionNumber="AX_1"
        ),
        _object(
            smith,
            mr_series,
            PatientName="Smith^John",
            PatientID="US-1",
            AccessionNumber="AX_1",
            Modality="MR",
            SOPClassUID=MRImageStorage,
            StudyDate="20251231",
        ),
        _object(
            smith2,
            generate_uid(),
            PatientName="Smith^John",
            PatientID="US-1",
            AccessionNumber="AXY1",
            StudyDate="20251201",
        ),
        _object(
            obrien,
            generate_uid(),
            PatientName="O'Brien^Pat",
            PatientID="IE-1",
            StudyDate="20240301",
            StudyDescription="xzy",
        ),
    ]
    for data in objects:
        assert ingest.store_part10(data, source).status is StoreStatus.STORED
    return Corpus(cyrillic, smith, smith2, obrien, [ct_series, mr_series])


@pytest.fixture
def session(db_backend: Backend) -> Iterator[Session]:
    """A session on the test database."""
    engine = create_index_engine(db_backend.settings)
    with session_factory(engine)() as db:
        yield db
    engine.dispose()


def query(level: str, **keys: object) -> Dataset:
    """A C-FIND identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def values(
    session: Session, identifier: Dataset, keyword: str, model: QueryModel = STUDY_ROOT
) -> list[str]:
    """The ``keyword`` value of every response, as strings."""
    return [str(ds.get(keyword, "")) for ds in find(session, identifier, model)]


def test_sql_metacharacters_match_literally(corpus: Corpus, session: Session) -> None:
    assert values(session, query("STUDY", AccessionNumber="A%*"), "AccessionNumber") == ["A%_1"]
    assert values(session, query("STUDY", AccessionNumber="?X_*"), "AccessionNumber") == ["AX_1"]
    assert values(session, query("STUDY", AccessionNumber="A%_1"), "AccessionNumber") == ["A%_1"]
    assert values(session, query("STUDY", AccessionNumber="A__1"), "AccessionNumber") == []
    assert values(session, query("STUDY", StudyDescription="x!*"), "StudyDescription") == [
        "x!y 50%"
    ]
    assert values(session, query("STUDY", StudyDescription="*50%"), "StudyDescription") == [
        "x!y 50%"
    ]
    assert values(session, query("STUDY", PatientName="o'brien*"), "PatientName") == ["O'Brien^Pat"]
    assert (
        values(session, query("STUDY", PatientName="'; DROP TABLE patient; --"), "PatientName")
        == []
    )


def test_person_names_match_case_insensitively(corpus: Corpus, session: Session) -> None:
    assert values(session, query("STUDY", PatientName="smith^john"), "StudyInstanceUID") == [
        "",
        "",
    ]
    assert values(
        session, query("STUDY", PatientName="иванов*", StudyInstanceUID=""), "StudyInstanceUID"
    ) == [corpus.cyrillic]
    responses = list(find(session, query("PATIENT", PatientName="ИВАНОВ^ИВАН"), PATIENT_ROOT))
    assert [str(ds.PatientName) for ds in responses] == ["Иванов^Иван"]
    assert responses[0].SpecificCharacterSet == "ISO_IR 192"


def test_date_ranges(corpus: Corpus, session: Session) -> None:
    def uids(date: str) -> set[str]:
        return set(
            values(session, query("STUDY", StudyDate=date, StudyInstanceUID=""), "StudyInstanceUID")
        )

    assert uids("20260101-") == {corpus.cyrillic, corpus.smith}
    assert uids("20260101-20260110") == {corpus.cyrillic}
    assert uids("-20240301") == {corpus.obrien}
    assert uids("20240302-20251231") == {corpus.smith2}
    assert uids("20261125") == {corpus.smith}  # the CT slices' date was indexed first
    with pytest.raises(QueryError):
        list(find(session, query("STUDY", StudyDate="2026-01-01x"), STUDY_ROOT))


def test_uid_lists_and_universal_matching(corpus: Corpus, session: Session) -> None:
    listed = query("STUDY", StudyInstanceUID=[corpus.cyrillic, corpus.obrien])
    assert set(values(session, listed, "StudyInstanceUID")) == {corpus.cyrillic, corpus.obrien}
    assert len(values(session, query("STUDY", StudyInstanceUID=""), "StudyInstanceUID")) == 4
    assert (
        values(session, query("STUDY", StudyInstanceUID=generate_uid()), "StudyInstanceUID") == []
    )


def test_computed_attributes_and_return_keys(corpus: Corpus, session: Session) -> None:
    identifier = query(
        "STUDY",
        StudyInstanceUID=corpus.smith,
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        SOPClassesInStudy="",
        PatientAge="",
    )
    (match,) = find(session, identifier, STUDY_ROOT)
    assert sorted(match.ModalitiesInStudy) == ["CT", "MR"]
    assert match.NumberOfStudyRelatedSeries == 2
    assert match.NumberOfStudyRelatedInstances == 3
    assert sorted(match.SOPClassesInStudy) == sorted([CTImageStorage, MRImageStorage])
    assert "PatientAge" in match and match["PatientAge"].VM == 0
    assert set(match.dir()) == set(identifier.dir())
    assert "SpecificCharacterSet" not in match
    by_modality = query("STUDY", ModalitiesInStudy="MR", StudyInstanceUID="")
    assert values(session, by_modality, "StudyInstanceUID") == [corpus.smith]
    (patient,) = find(
        session,
        query(
            "PATIENT",
            PatientID="US-1",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        PATIENT_ROOT,
    )
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedSeries) == (2, 3)
    assert patient.NumberOfPatientRelatedInstances == 4


def test_lower_levels_need_the_unique_keys_above(corpus: Corpus, session: Session) -> None:
    with pytest.raises(QueryError):
        list(find(session, query("SERIES", Modality="CT"), STUDY_ROOT))
    with pytest.raises(QueryError):
        list(find(session, query("STUDY", StudyInstanceUID=corpus.smith), PATIENT_ROOT))
    with pytest.raises(QueryError):
        list(find(session, query("PATIENT"), STUDY_ROOT))
    series = query(
        "SERIES",
        StudyInstanceUID=corpus.smith,
        SeriesInstanceUID="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )
    found = [
        (ds.SeriesInstanceUID, ds.Modality, ds.NumberOfSeriesRelatedInstances)
        for ds in find(session, series, STUDY_ROOT)
    ]
    assert found == [(corpus.smith_series[0], "CT", 2), (corpus.smith_series[1], "MR", 1)]
    images = query(
        "IMAGE",
        PatientID="US-1",
        StudyInstanceUID=corpus.smith,
        SeriesInstanceUID=corpus.smith_series[0],
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert len(list(find(session, images, PATIENT_ROOT))) == 2


def test_date_and_time_bounds_are_shared_by_query_and_worklist() -> None:
    """One parser of range bounds: Query/Retrieve raises QueryError, the worklist wraps it."""
    from pacs.query.matching import compact, range_bounds

    assert range_bounds("2024.01.01-", "date") == ("20240101", "")
    assert range_bounds("-10:30", "time") == ("", "1030")
    assert compact(" 10:30:15.5 ", "time") == "103015.5"
    for value, kind in (("-", "date"), ("2024x-", "date"), ("10h-", "time")):
        with pytest.raises(QueryError):
            range_bounds(value, kind)
