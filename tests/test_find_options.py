"""C-FIND refinements of ``pacs.query``: character sets both ways, PN component matching,
sequence return keys, non-hierarchical paging (QIDO-RS), on both databases."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy.orm import Session

from pacs.config import PnMatching
from pacs.index.engine import create_index_engine, session_factory
from pacs.ingest import Source, StoreStatus
from pacs.query import QueryModel, find
from pacs.query.matching import MatchOptions
from pacs.runtime import build_ingest
from tests.conftest import Backend
from tests.query_corpus import QueryCorpus, build_corpus, part10

STUDY_ROOT = QueryModel.STUDY_ROOT


@pytest.fixture
def corpus(db_backend: Backend) -> QueryCorpus:
    """The query corpus, stored."""
    corpus = build_corpus()
    ingest = build_ingest(db_backend.settings)
    for ds in corpus.objects:
        stored = ingest.store_part10(part10(ds), Source(channel="import"))
        assert stored.status is StoreStatus.STORED
    ingest.engine.dispose()
    return corpus


@pytest.fixture
def session(db_backend: Backend, corpus: QueryCorpus) -> Iterator[Session]:
    """A session on the stored corpus."""
    engine = create_index_engine(db_backend.settings)
    with session_factory(engine)() as db:
        yield db
    engine.dispose()


def study_query(charset: str | None = None, **keys: object) -> Dataset:
    """A STUDY-level identifier asking for the Study Instance UID."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def on_the_wire(ds: Dataset) -> Dataset:
    """``ds`` encoded as a C-FIND identifier is (in its own character set) and decoded back."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)


def test_character_set_honoured_both_ways(session: Session, corpus: QueryCorpus) -> None:
    # asked in ISO_IR 144 (Cyrillic): answered in ISO_IR 144, for either stored encoding
    for name, stored in (("петрова*", corpus.petrova), ("ИВАНОВ^ИВАН", corpus.ivanov)):
        asked = on_the_wire(study_query("ISO_IR 144", PatientName=name))
        (match,) = find(session, asked, STUDY_ROOT)
        assert match.SpecificCharacterSet == "ISO_IR 144"
        assert match.StudyInstanceUID == stored
        back = on_the_wire(match)
        assert str(back.PatientName) in ("Петрова^Анна", "Иванов^Иван")
        assert back.PatientName.original_string.decode("iso8859_5") == str(back.PatientName)
    # asked in UTF-8: answered in UTF-8
    (match,) = find(session, on_the_wire(study_query("ISO_IR 192", PatientName="пет*")), STUDY_ROOT)
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(on_the_wire(match).PatientName) == "Петрова^Анна"
    # asked in Latin-1, which cannot carry Cyrillic: answered in UTF-8
    (match,) = find(
        session, study_query("ISO_IR 100", PatientID="RU-2", PatientName=""), STUDY_ROOT
    )
    assert match.SpecificCharacterSet == "ISO_IR 192"
    # an ASCII answer needs no character set
    (match,) = find(
        session, study_query("ISO_IR 144", PatientID="US-1", StudyDate="20251201"), STUDY_ROOT
    )
    assert "PatientName" not in match and match.SpecificCharacterSet == ""


def test_person_name_component_matching(session: Session, corpus: QueryCorpus) -> None:
    components = MatchOptions(pn_matching=PnMatching.COMPONENTS)

    def studies(name: str, options: MatchOptions = components) -> list[str]:
        found = find(session, study_query(PatientName=name), STUDY_ROOT, options=options)
        return [ds.StudyInstanceUID for ds in found]

    smiths = [corpus.smith, corpus.smith2]
    assert studies("smith") == smiths
    assert studies("SMITH^JOHN") == smiths
    assert studies("^john") == smiths
    assert studies("smith^j?hn") == smiths
    assert studies("smith^jane") == []
    assert studies("^анна") == [corpus.petrova]
    assert studies("smith", MatchOptions()) == []  # whole-name matching (the default)
    assert studies("smith^john", MatchOptions()) == smiths


def test_sequence_return_keys(session: Session, corpus: QueryCorpus) -> None:
    item = Dataset()
    item.RequestedProcedureID = ""
    item.ScheduledProcedureStepID = ""
    identifier = study_query(PatientID="RU-1")
    identifier.RequestAttributesSequence = Sequence([item])
    identifier.ReferencedStudySequence = Sequence()
    (match,) = find(session, identifier, STUDY_ROOT)
    assert match.StudyInstanceUID == corpus.ivanov
    assert match["RequestAttributesSequence"].VR == "SQ"
    assert len(match.RequestAttributesSequence) == 0  # not held: zero-length, as PS3.4 allows
    assert len(match.ReferencedStudySequence) == 0
    assert on_the_wire(match).RequestAttributesSequence == Sequence()


def test_relational_queries_and_paging(session: Session, corpus: QueryCorpus) -> None:
    series = Dataset()
    series.QueryRetrieveLevel = "SERIES"
    series.Modality = "MR"
    series.StudyInstanceUID = ""
    found = find(session, series, STUDY_ROOT, hierarchical=False)
    assert [ds.StudyInstanceUID for ds in found] == [corpus.smith, corpus.petrova]
    every = [ds.StudyInstanceUID for ds in find(session, study_query(), STUDY_ROOT)]
    assert every == corpus.studies
    pages = [
        [ds.StudyInstanceUID for ds in find(session, study_query(), STUDY_ROOT, limit=3, offset=o)]
        for o in (0, 3)
    ]
    assert pages == [corpus.studies[:3], corpus.studies[3:]]
