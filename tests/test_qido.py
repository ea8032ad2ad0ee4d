"""QIDO-RS (PS3.18 10.6) at /dicomweb on both databases, through the FastAPI app in process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import func, select

from pacs.audit.tables import AuditEvent
from pacs.index.models import Instance, Patient, Series, Study
from pacs.ingest import Source, StoreStatus
from pacs.runtime import build_ingest
from tests.conftest import Backend
from tests.query_corpus import QueryCorpus, build_corpus, part10
from viewer_api.app import create_app

DICOM_JSON = "application/dicom+json"


@pytest.fixture
def corpus(db_backend: Backend) -> QueryCorpus:
    """The query corpus stored through the ingest path."""
    corpus = build_corpus()
    ingest = build_ingest(db_backend.settings)
    for ds in corpus.objects:
        assert ingest.store_part10(part10(ds), Source(channel="import")).status is (
            StoreStatus.STORED
        )
    ingest.engine.dispose()
    return corpus


def _client(backend: Backend, **settings: Any) -> Iterator[TestClient]:
    app = create_app(backend.with_settings(**settings))
    with TestClient(app) as client:
        yield client
    app.state.engine.dispose()


@pytest.fixture
def client(db_backend: Backend, corpus: QueryCorpus) -> Iterator[TestClient]:
    """A client of the app on the stored corpus (default settings)."""
    yield from _client(db_backend)


def search(client: TestClient, path: str, **headers: str) -> list[dict[str, Any]]:
    """GET a QIDO-RS path; checks 200 and DICOM JSON, and returns the datasets."""
    response = client.get(f"/dicomweb{path}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    body = response.json()
    assert isinstance(body, list)
    for item in body:
        _valid_dicom_json(item)
    return body


def _valid_dicom_json(item: dict[str, Any]) -> None:
    """A response dataset is DICOM JSON with dictionary VRs and survives a round trip."""
    ds = Dataset.from_json(item)
    assert ds.to_json_dict() == item
    for tag_text, element in item.items():
        assert element["vr"] in str(dictionary_VR(Tag(int(tag_text, 16)))), tag_text
    assert "00080052" not in item  # QueryRetrieveLevel is a DIMSE matter


def uids(body: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    """The values of one UID attribute, in response order."""
    return [item[tag]["Value"][0] for item in body]


def test_every_endpoint(client: TestClient, corpus: QueryCorpus) -> None:
    studies = search(client, "/studies")
    assert uids(studies) == corpus.studies  # stable order: primary keys
    smith = Dataset.from_json(studies[0])
    assert (str(smith.PatientName), smith.PatientID) == ("Smith^John", "US-1")
    assert sorted(smith.ModalitiesInStudy) == ["CT", "MR"]
    assert (smith.NumberOfStudyRelatedSeries, smith.NumberOfStudyRelatedInstances) == (2, 3)
    assert smith.InstanceAvailability == "ONLINE"
    assert smith.RetrieveURL == f"http://testserver/dicomweb/studies/{corpus.smith}"
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "PatientBirthDate", "StudyID"):
        assert keyword in smith
    cyrillic = [Dataset.from_json(item) for item in studies[2:]]
    assert [str(ds.PatientName) for ds in cyrillic] == ["Иванов^Иван", "Петрова^Анна"]

    series = search(client, f"/studies/{corpus.smith}/series")
    assert uids(series, "0020000E") == [corpus.smith_ct, corpus.smith_mr]
    mr = Dataset.from_json(series[1])
    assert (mr.Modality, mr.SeriesNumber, mr.NumberOfSeriesRelatedInstances) == ("MR", 2, 1)
    assert mr.RetrieveURL.endswith(f"/studies/{corpus.smith}/series/{corpus.smith_mr}")

    all_mr = search(client, "/series?Modality=MR")
    assert uids(all_mr) == [corpus.smith, corpus.petrova]
    assert "00100010" in all_mr[0]  # study attributes too: the series of any study

    in_series = search(client, f"/studies/{corpus.smith}/series/{corpus.smith_ct}/instances")
    expected = [ds.SOPInstanceUID for ds in corpus.objects[:2]]
    assert uids(in_series, "00080018") == expected
    first = Dataset.from_json(in_series[0])
    assert (first.Rows, first.Columns, first.InstanceNumber) == (8, 8, 1)
    assert first.RetrieveURL.endswith(
        f"/studies/{corpus.smith}/series/{corpus.smith_ct}/instances/{expected[0]}"
    )
    in_study = search(client, f"/studies/{corpus.smith}/instances")
    assert uids(in_study, "00080018") == [ds.SOPInstanceUID for ds in corpus.objects[:3]]
    assert uids(in_study, "0020000E") == [corpus.smith_ct, corpus.smith_ct, corpus.smith_mr]
    everywhere = search(client, "/instances?PatientID=US-1")
    assert len(everywhere) == 4
    one = search(client, f"/instances?SOPInstanceUID={expected[1]}")
    assert uids(one, "00080018") == [expected[1]]


def test_matching_is_c_find_matching(client: TestClient, corpus: QueryCorpus) -> None:
    def studies(query: str) -> list[str]:
        return uids(search(client, f"/studies?{query}"))

    smiths = [corpus.smith, corpus.smith2]
    assert studies("PatientName=smith*") == smiths  # case-insensitive PN
    assert studies("PatientName=smith%2A") == smiths  # a percent-encoded '*' is a wildcard too
    assert studies("00100010=SMITH^JOHN") == smiths  # tag instead of keyword
    assert studies("PatientName=sm?th^john") == smiths
    assert studies("PatientName=Smith") == []  # whole-name matching by default
    assert studies(f"PatientName={quote('иванов*')}") == [corpus.ivanov]
    assert studies(f"PatientName={quote('ПЕТРОВА^АННА')}") == [corpus.petrova]  # noqa: RUF001
    assert studies("PatientID=US-1&StudyDate=20251201") == [corpus.smith2]
    assert studies("StudyDate=20250101-") == smiths
    assert studies("StudyDate=-20240301") == [corpus.ivanov, corpus.petrova]
    assert studies("StudyDate=20240101-20251231&ModalitiesInStudy=CT") == [
        corpus.smith2,
        corpus.ivanov,
    ]
    assert studies("Modality=MR") == [corpus.smith, corpus.petrova]
    assert studies(f"StudyInstanceUID={corpus.ivanov},{corpus.smith}") == [
        corpus.smith,
        corpus.ivanov,
    ]
    assert studies(f"StudyInstanceUID={corpus.ivanov}%5C{corpus.petrova}") == [
        corpus.ivanov,
        corpus.petrova,
    ]
    # SQL metacharacters are literal: '%' and '_' only match themselves
    assert studies(f"AccessionNumber={quote('A%_1')}") == [corpus.smith2]
    assert studies(f"AccessionNumber={quote('A__1')}") == []
    assert studies(f"StudyDescription={quote('*DROP TABLE*')}") == [corpus.smith2]
    assert studies("PatientID=&AccessionNumber=*") == corpus.studies  # universal matching


def test_includefield(client: TestClient, corpus: QueryCorpus) -> None:
    (study,) = search(
        client,
        f"/studies?StudyInstanceUID={corpus.smith}&includefield=SOPClassesInStudy,00080080"
        "&includefield=NumberOfPatientRelatedStudies"
        "&includefield=RequestAttributesSequence.RequestedProcedureID",
    )
    ds = Dataset.from_json(study)
    assert len(ds.SOPClassesInStudy) == 2
    assert ds.NumberOfPatientRelatedStudies == 2
    assert study["00080080"] == {"vr": "LO"}  # requested, not held: present, empty
    assert study["00400275"]["vr"] == "SQ" and not study["00400275"].get("Value")
    (everything,) = search(client, f"/studies?StudyInstanceUID={corpus.smith}&includefield=all")
    assert {"00201200", "00201202", "00080062", "00100010"} <= set(everything)
    (series,) = search(
        client, f"/studies/{corpus.smith}/series?Modality=CT&includefield=BodyPartExamined"
    )
    assert series["00180015"]["Value"] == ["CHEST"]


def test_fuzzymatching(client: TestClient, corpus: QueryCorpus) -> None:
    def studies(query: str) -> list[str]:
        return uids(search(client, f"/studies?fuzzymatching=true&{query}"))

    assert studies("PatientName=joh") == [corpus.smith, corpus.smith2]  # any component prefix
    assert studies("PatientName=JOHN%20smi") == [corpus.smith, corpus.smith2]  # every word
    assert studies(f"PatientName={quote('анн')}") == [corpus.petrova]
    assert studies("PatientName=ohn") == []  # prefixes, not substrings
    assert uids(search(client, "/studies?PatientName=joh&fuzzymatching=false")) == []


def test_limit_offset_and_maximum(db_backend: Backend, corpus: QueryCorpus) -> None:
    for client in _client(db_backend, qido_max_limit=3):
        page = client.get("/dicomweb/studies?limit=2")
        assert uids(page.json()) == corpus.studies[:2]
        assert "offset=2" in page.headers["warning"] and page.headers["warning"].startswith("299")
        rest = client.get("/dicomweb/studies?limit=2&offset=2")
        assert uids(rest.json()) == corpus.studies[2:] and "warning" not in rest.headers
        assert client.get("/dicomweb/studies?offset=4").json() == []
        clamped = client.get("/dicomweb/studies?limit=100000")
        assert uids(clamped.json()) == corpus.studies[:3]
        assert "exceeds the maximum" in clamped.headers["warning"]
        assert "offset=3" in clamped.headers["warning"]
        unlimited = client.get("/dicomweb/instances?PatientID=US-1")
        assert len(unlimited.json()) == 3 and "offset=3" in unlimited.headers["warning"]


def test_person_name_components_setting(db_backend: Backend, corpus: QueryCorpus) -> None:
    for client in _client(db_backend, pn_component_matching="components"):
        smiths = [corpus.smith, corpus.smith2]
        assert uids(search(client, "/studies?PatientName=smith")) == smiths
        assert uids(search(client, "/studies?PatientName=smith^j*")) == smiths
        assert uids(search(client, f"/studies?PatientName={quote('^анна')}")) == [corpus.petrova]
        assert uids(search(client, "/studies?PatientName=john")) == []


BAD_REQUESTS = [
    ("/studies?Foo=1", 400, "unknown attribute"),
    ("/studies?99990010=x", 400, "unknown attribute"),
    ("/studies?StudyDate=2026-01-01", 400, "not a date"),
    ("/studies?StudyDate=20261399", 400, "not a date"),
    ("/studies?StudyDate=-", 400, "empty range"),
    ("/studies?StudyTime=25h", 400, "not a time"),
    ("/studies?StudyInstanceUID=1.2.abc", 400, "not a valid UID"),
    ("/studies?StudyInstanceUID=1.2.3,01.2", 400, "not a valid UID"),
    ("/studies?PatientID=%00", 400, "control characters"),
    ("/studies?PatientID=" + "x" * 2000, 400, "longer than"),
    ("/studies?limit=-1", 400, "limit"),
    ("/studies?limit=0", 400, "limit"),
    ("/studies?limit=ten", 400, "limit"),
    ("/studies?offset=99999999999999999999", 400, "offset"),
    ("/studies?offset=1e3", 400, "offset"),
    ("/studies?fuzzymatching=maybe", 400, "fuzzymatching"),
    ("/studies?includefield=NotAnAttribute", 400, "unknown attribute"),
    ("/studies?includefield=PatientName.PatientID", 400, "not a sequence"),
    ("/studies?PatientName.PatientID=x", 400, "not a sequence"),
    ("/studies?PatientID=1&PatientID=2", 400, "more than once"),
    ("/studies?SeriesInstanceUID=1.2.3", 400, "series-level attribute"),
    ("/studies?NumberOfStudyRelatedSeries=many", 400, "not an integer"),
    ("/studies/not-a-uid/series", 400, "not a valid UID"),
    ("/studies/1.2.3.4.5/series", 404, "no such study"),
    ("/studies/1.2.3.4.5/instances", 404, "no such study"),
    ("/instances?PatientName=x&Rows=1%3B%20DROP%20TABLE%20instance", 400, "not an integer"),
]


def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client: TestClient, corpus: QueryCorpus, db_backend: Backend
) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]

    def counts() -> tuple[int, ...]:
        with engine.connect() as conn:
            return tuple(
                conn.scalar(select(func.count()).select_from(table)) or 0
                for table in (Patient, Study, Series, Instance)
            )

    before = counts()
    for path, status, message in BAD_REQUESTS:
        response = client.get(f"/dicomweb{path}")
        assert response.status_code == status, (path, response.text)
        assert message in response.json()["detail"], (path, response.text)
    series_path = f"/dicomweb/studies/{corpus.smith}/series/1.2.3.4/instances"
    assert client.get(series_path).status_code == 404
    assert counts() == before
    for accept in ('multipart/related; type="application/dicom+xml"', "application/dicom+xml"):
        response = client.get("/dicomweb/studies", headers={"Accept": accept})
        assert response.status_code == 406, accept
    assert client.get("/dicomweb/studies", headers={"Accept": "*/*"}).status_code == 200
    assert client.get("/dicomweb/studies", headers={"Accept": "application/json"}).json()
    with engine.connect() as conn:
        outcomes = conn.scalars(
            select(AuditEvent.outcome).where(AuditEvent.resource.like("/dicomweb/%"))
        ).all()
    assert len(outcomes) == len(BAD_REQUESTS) + 1 + 4
    assert set(outcomes) == {200, 400, 404, 406}


def test_unsupported_matching_key_warns(client: TestClient, corpus: QueryCorpus) -> None:
    level = client.get("/dicomweb/studies?QueryRetrieveLevel=IMAGE&SpecificCharacterSet=X")
    assert uids(level.json()) == corpus.studies  # the resource sets the level
    response = client.get("/dicomweb/studies?PatientAge=040Y&includefield=PatientAge")
    assert response.status_code == 200
    assert uids(response.json()) == corpus.studies  # ignored as a matching key, returned
    assert "PatientAge" in response.headers["warning"]


def test_gzip_and_cors(db_backend: Backend, corpus: QueryCorpus) -> None:
    origin = "https://viewer.example.org"
    for client in _client(db_backend, cors_origins=f"{origin}, http://localhost:3000"):
        response = client.get(
            "/dicomweb/studies?limit=1000",
            headers={"Origin": origin, "Accept-Encoding": "gzip"},
        )
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["access-control-allow-origin"] == origin
        assert "warning" in response.headers["access-control-expose-headers"].lower()
        assert len(response.json()) == 4  # httpx undid the gzip
        preflight = client.options(
            "/dicomweb/studies",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200
        other = client.get("/dicomweb/studies", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        small = client.get("/health", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers  # under ~1 KB: not worth it
    for client in _client(db_backend):
        plain = client.get("/dicomweb/studies", headers={"Origin": origin})
        assert "access-control-allow-origin" not in plain.headers  # CORS off by default
