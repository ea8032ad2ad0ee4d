"""STOW-RS (PS3.18 10.5) at /dicomweb: dicomweb-client against a running archive, edge cases
through the app, and the multipart parser on its own."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from requests import HTTPError
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.index.engine import create_index_engine, session_factory
from testkit.dicom_factory import ct_slice, write_ct_series
from tests.conftest import Backend, RunningArchive
from tests.dimse_tools import archive_view
from viewer_api.app import create_app
from viewer_api.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)

PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "reportsi.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
]
BOUNDARY = "stow-boundary-7d1f"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
DICOM_JSON = "application/dicom+json"

REFERENCED = "ReferencedSOPSequence"
FAILED = "FailedSOPSequence"


def encode(ds: Dataset) -> bytes:
    """``ds`` as dicomweb-client encodes an instance (``pydicom.dcmwrite``)."""
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        return buffer.getvalue()


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(*parts: bytes, content_type: str | None = "application/dicom") -> bytes:
    """A multipart/related body with ``BOUNDARY``; every part of ``content_type``."""
    out = io.BytesIO()
    for data in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        if content_type is not None:
            out.write(f"Content-Type: {content_type}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def answer(response: httpx.Response) -> Dataset:
    """The response body as a DICOM data set (validates the DICOM JSON)."""
    assert response.headers["content-type"] == DICOM_JSON
    return Dataset.from_json(response.json())


def failure_reasons(ds: Dataset) -> list[int]:
    return [int(item.FailureReason) for item in ds.get(FAILED, [])]


def small_ct(study: str | None = None, size: int = 16, **kwargs: Any) -> Dataset:
    return ct_slice(study or generate_uid(), generate_uid(), 0, size=size, **kwargs)


def audit_events(backend: Backend) -> list[AuditEvent]:
    engine = create_index_engine(backend.settings)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(AuditEvent).order_by(AuditEvent.pk)))
    finally:
        engine.dispose()


@pytest.fixture
def client(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(backend.with_settings(max_object_size=64 * 1024))
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()


def post(
    client: TestClient,
    body: bytes | Iterator[bytes],
    path: str = "/dicomweb/studies",
    content_type: str = MULTIPART,
) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": content_type})


# ---------------------------------------------------------------- a real client, a real server


def test_dicomweb_client_store_byte_exact(archive: RunningArchive, tmp_path: Path) -> None:
    """dicomweb-client stores CT and pydicom's files; bytes kept; re-send ok; conflict 409."""
    study = generate_uid()
    datasets = [pydicom.dcmread(p) for p in write_ct_series(tmp_path / "ct", 3, 32, study)]
    datasets += [pydicom.dcmread(get_testdata_file(name)) for name in PYDICOM_FILES]
    sent = {str(ds.SOPInstanceUID): encode(ds) for ds in datasets}
    web = DICOMwebClient(url=f"{archive.http}/dicomweb")

    result = web.store_instances(datasets)
    assert FAILED not in result
    assert {str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence} == set(sent)
    for item in result.ReferencedSOPSequence:
        # URLs follow the request's Host header; dicomweb-client sends it without the port
        url = urlsplit(item.RetrieveURL)
        assert url.path.startswith("/dicomweb/studies/")
        assert url.path.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")
    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        assert set(rows) == set(sent)
        for uid, data in sent.items():
            assert view.read(uid) == data, f"{uid} not stored byte-exact"
            assert rows[uid].source_host == "127.0.0.1"

    # the same instances again: idempotent success; one study -> the study's RetrieveURL
    again = web.store_instances(datasets[:3], study_instance_uid=study)
    assert len(again.ReferencedSOPSequence) == 3
    assert urlsplit(again.RetrieveURL).path == f"/dicomweb/studies/{study}"

    # a different object with a stored SOP Instance UID: refused, all failed -> 409
    changed = datasets[0]
    changed.SeriesDescription = "CHANGED"
    with pytest.raises(HTTPError) as raised:
        web.store_instances([changed])
    assert raised.value.response.status_code == 409
    refused = Dataset.from_json(raised.value.response.json())
    assert failure_reasons(refused) == [0x0111]
    assert refused.FailedSOPSequence[0].ReferencedSOPInstanceUID == changed.SOPInstanceUID

    listed = httpx.get(f"{archive.http}/api/studies").json()
    assert study in {s["study_instance_uid"] for s in listed["items"]}
    with archive_view(archive.backend.settings) as view:
        assert view.read(str(changed.SOPInstanceUID)) == sent[str(changed.SOPInstanceUID)]


# ---------------------------------------------------------------- edge cases through the app


def test_mixed_parts_answer_202(client: TestClient, backend: Backend) -> None:
    good = small_ct()
    response = post(client, multipart(part10(good), b"this is no DICOM object"))
    assert response.status_code == 202
    ds = answer(response)
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert ds.ReferencedSOPSequence[0].ReferencedSOPClassUID == good.SOPClassUID
    assert failure_reasons(ds) == [0xC000]
    assert ds.RetrieveURL.endswith(f"/dicomweb/studies/{good.StudyInstanceUID}")
    with archive_view(backend.settings) as view:
        assert set(view.assert_consistent()) == {good.SOPInstanceUID}


def test_retrieve_urls_use_the_public_base_url(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(backend.with_settings(public_base_url="https://pacs.example.org/"))
    study = generate_uid()
    with TestClient(app) as proxied:
        response = post(proxied, multipart(part10(small_ct(study))), f"/dicomweb/studies/{study}")
    app.state.engine.dispose()
    assert response.status_code == 200
    ds = answer(response)
    assert ds.RetrieveURL == f"https://pacs.example.org/dicomweb/studies/{study}"
    assert ds.ReferencedSOPSequence[0].RetrieveURL.startswith(
        f"https://pacs.example.org/dicomweb/studies/{study}/series/"
    )


def test_all_stored_200_and_visible(client: TestClient, backend: Backend) -> None:
    study = generate_uid()
    cts = [small_ct(study), small_ct(study)]
    response = post(client, multipart(*(part10(ds) for ds in cts)), f"/dicomweb/studies/{study}")
    assert response.status_code == 200
    assert len(answer(response).ReferencedSOPSequence) == 2
    listed = client.get("/api/studies").json()["items"]
    assert [s["study_instance_uid"] for s in listed] == [study]
    with archive_view(backend.settings) as view:
        rows = view.assert_consistent()
        assert {r.sop_instance_uid for r in rows.values()} == {ds.SOPInstanceUID for ds in cts}
    events = [e for e in audit_events(backend) if e.action == "create"]
    assert [(e.resource, e.outcome) for e in events] == [(f"/dicomweb/studies/{study}", 200)]


def test_wrong_study_refused(client: TestClient, backend: Backend) -> None:
    target, other = generate_uid(), small_ct()
    response = post(client, multipart(part10(other)), f"/dicomweb/studies/{target}")
    assert response.status_code == 409
    ds = answer(response)
    assert failure_reasons(ds) == [0xA900]
    assert ds.FailedSOPSequence[0].ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert ds.RetrieveURL.endswith(f"/dicomweb/studies/{target}")
    with archive_view(backend.settings) as view:
        assert view.assert_consistent() == {}


def test_conflict_and_oversize_and_other_media_type(client: TestClient, backend: Backend) -> None:
    first = small_ct()
    assert post(client, multipart(part10(first))).status_code == 200
    conflict = copy.deepcopy(first)
    conflict.SeriesDescription = "OTHER"  # another PatientID would be an identity conflict
    big = small_ct(size=256)  # 128 KiB of pixels > 64 KiB limit
    body = multipart(part10(conflict), part10(big))
    response = post(client, body)
    assert response.status_code == 409
    assert failure_reasons(answer(response)) == [0x0111, 0xA700]
    text = post(client, multipart(b"hello", content_type="text/plain"))
    assert text.status_code == 409
    assert failure_reasons(answer(text)) == [0xC000]
    after = small_ct()  # a part after an oversized one is read from the right place
    mixed = post(client, multipart(part10(big), part10(after)))
    assert mixed.status_code == 202
    assert failure_reasons(answer(mixed)) == [0xA700]
    with archive_view(backend.settings) as view:
        assert set(view.assert_consistent()) == {first.SOPInstanceUID, after.SOPInstanceUID}
        assert view.read(first.SOPInstanceUID) == part10(first)
        assert view.read(after.SOPInstanceUID) == part10(after)


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("text/plain", 415),
        ('multipart/related; type="application/dicom"', 400),
        (f"multipart/related; type=application/dicom; boundary=other-{BOUNDARY}", 400),
    ],
)
def test_bad_content_type_or_boundary(
    client: TestClient, backend: Backend, content_type: str, status: int
) -> None:
    response = post(client, multipart(part10(small_ct())), content_type=content_type)
    assert response.status_code == status
    assert "detail" in response.json()
    with archive_view(backend.settings) as view:
        assert view.assert_consistent() == {}
    assert [(e.action, e.outcome) for e in audit_events(backend)] == [("create", status)]


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/dicom+xml", 406),
        ("application/dicom+json;q=0, application/dicom+xml", 406),
        ("application/dicom+xml, application/dicom+json;q=0.5", 200),
        ("*/*", 200),
        ("application/json", 200),
    ],
)
def test_accept_header(client: TestClient, accept: str, status: int) -> None:
    headers = {"Content-Type": MULTIPART, "Accept": accept}
    body = multipart(part10(small_ct()))
    assert client.post("/dicomweb/studies", content=body, headers=headers).status_code == status


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
@pytest.mark.parametrize(
    "body",
    [
        b"",  # no parts
        f"--{BOUNDARY}--\r\n".encode(),  # no parts
        "truncated",  # no closing boundary
        "bad-header",  # header line without a colon
    ],
)
def test_malformed_multipart_400_nothing_stored(
    client: TestClient, backend: Backend, body: bytes | str
) -> None:
    data = part10(small_ct())
    if body == "truncated":
        body = multipart(data)[:-20]
    elif body == "bad-header":
        body = f"--{BOUNDARY}\r\nno colon here\r\n\r\n".encode() + data + multipart(data)
    assert isinstance(body, bytes)
    response = post(client, body)
    assert response.status_code == 400
    with archive_view(backend.settings) as view:
        assert view.assert_consistent() == {}


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
def test_invalid_study_in_path_400(client: TestClient) -> None:
    response = post(client, multipart(part10(small_ct())), "/dicomweb/studies/not-a-uid")
    assert response.status_code == 400


@pytest.mark.parametrize("backend", ["sqlite-file"], indirect=True)
def test_streamed_body_in_small_chunks(client: TestClient, backend: Backend) -> None:
    """Quoted boundary, a preamble, a part without Content-Type, body in 7-byte chunks."""
    cts = [small_ct(), small_ct()]
    body = b"preamble to ignore" + b"\r\n" + multipart(*(part10(ds) for ds in cts))
    body = body.replace(b"Content-Type: application/dicom\r\n", b"", 1) + b"epilogue"
    chunks = iter([body[i : i + 7] for i in range(0, len(body), 7)])
    ctype = f'Multipart/Related; boundary="{BOUNDARY}"; type="application/dicom"'
    response = post(client, chunks, content_type=ctype)
    assert response.status_code == 200, response.text
    with archive_view(backend.settings) as view:
        for ds in cts:
            assert view.read(ds.SOPInstanceUID) == part10(ds)


# ---------------------------------------------------------------- the parser alone


def _events(body: bytes, size: int) -> list[Any]:
    parser = MultipartParser(BOUNDARY.encode())
    events: list[Any] = []
    for i in range(0, len(body), size):
        events += parser.feed(body[i : i + size])
    parser.close()
    merged: list[Any] = []
    for event in events:  # join data pieces so that chunkings compare equal
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def test_parser_independent_of_chunking() -> None:
    payloads = [b"", b"\r\n--" + BOUNDARY.encode()[:-1] + b"x", bytes(range(256)) * 10]
    body = multipart(*payloads)
    expected = _events(body, len(body))
    assert expected == [
        e
        for p in payloads
        for e in (
            PartStart({"content-type": "application/dicom"}),
            *([PartData(p)] if p else []),
            PartEnd(),
        )
    ]
    for size in (1, 2, 3, 5, 64):
        assert _events(body, size) == expected


def test_parser_rejects_missing_close() -> None:
    parser = MultipartParser(b"b")
    parser.feed(b"--b\r\n\r\ndata")
    with pytest.raises(MultipartError):
        parser.close()


def test_parse_media_type() -> None:
    assert parse_media_type('Multipart/Related; type="application/dicom"; boundary="a;b\\"c"') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": 'a;b"c'},
    )
    assert parse_media_type("multipart/related;boundary=abc") == (
        "multipart/related",
        {"boundary": "abc"},
    )
