"""WADO-RS against a running archive, with dicomweb-client, on SQLite+file and PostgreSQL+S3.

One archive per backend for the module; the objects are ingested through the archive's one
ingest path. Checked: stored bytes come back byte-exact, metadata is valid DICOM JSON whose
BulkDataURIs resolve, frames (native, JPEG 2000, RLE) by frame number, decoding on request,
rendered PNG/JPEG windowing and sizes, ETag/304, metadata kept current on add/replace/backfill,
and clear 400/404/406 refusals, each access audited.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, delete, func, select

from pacs.audit.tables import AuditEvent
from pacs.config import DuplicatePolicy
from pacs.ingest import Source, StoreStatus
from pacs.metadata.records import METADATA
from pacs.runtime import build_ingest
from tests.conftest import Backend, RunningArchive, data_file
from tests.dimse_tools import part10_bytes
from tests.wado_data import (
    j2k_ct,
    module_archive,
    native_multiframe,
    rle_rgb_2frame,
    windowing_slice,
)
from viewer_api.multipart import MultipartParser, PartData, PartStart, parse_media_type

# one xdist worker for the whole module: its module-scoped archive starts once
pytestmark = pytest.mark.xdist_group("test_wado")

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Loaded:
    """The running archive and what was stored in it."""

    archive: RunningArchive
    study: str
    series: dict[str, str]  # role -> SeriesInstanceUID
    instances: dict[str, list[Dataset]]  # role -> datasets in order
    stored: dict[str, bytes] = field(default_factory=dict)  # SOPInstanceUID -> bytes

    @property
    def url(self) -> str:
        return f"{self.archive.http}/dicomweb"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.url)

    def path(self, role: str, index: int = 0) -> str:
        ds = self.instances[role][index]
        series = f"{self.url}/studies/{self.study}/series/{ds.SeriesInstanceUID}"
        return f"{series}/instances/{ds.SOPInstanceUID}"

    def uids(self, role: str, index: int = 0) -> tuple[str, str, str]:
        ds = self.instances[role][index]
        return self.study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def ingest(backend: Backend, datasets: list[Dataset], **overrides: object) -> dict[str, bytes]:
    service = build_ingest(backend.with_settings(**overrides))
    stored = {}
    for ds in datasets:
        data = part10_bytes(ds)
        outcome = service.store_part10(data, Source(channel="import"))
        assert outcome.status in (StoreStatus.STORED, StoreStatus.REPLACED), outcome.reason
        stored[str(ds.SOPInstanceUID)] = data
    return stored


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql-s3"])
def shared_archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningArchive]:
    yield from module_archive(request, tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(shared_archive: RunningArchive) -> Loaded:
    study = generate_uid()
    grey_series = generate_uid()
    instances = {
        "grey": [windowing_slice(study, grey_series, i) for i in range(3)],
        "mono1": [windowing_slice(study, generate_uid(), 0, photometric="MONOCHROME1")],
        "multiframe": [native_multiframe(study)],
        "rle": [rle_rgb_2frame(study)],
    }
    with contextlib.suppress(pytest.skip.Exception):  # without test data: see needs_j2k
        instances["j2k"] = j2k_ct(study, 2)
    stored = ingest(shared_archive.backend, [ds for group in instances.values() for ds in group])
    series = {role: str(group[0].SeriesInstanceUID) for role, group in instances.items()}
    return Loaded(shared_archive, study, series, instances, stored)


@pytest.fixture
def needs_j2k(loaded: Loaded) -> None:
    """Skips (fails under CI) a test of the real JPEG 2000 CT when the test data lacks it."""
    if "j2k" not in loaded.instances:
        data_file("totalsegmentator", "example_ct_dicom")


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(part Content-Type, content) of a multipart/related response."""
    media_type, params = parse_media_type(response.headers["content-type"])
    assert media_type == "multipart/related", response.headers["content-type"]
    parser = MultipartParser(params["boundary"].encode())
    parts: list[tuple[str, bytes]] = []
    events = parser.feed(response.content)
    parser.close()
    for event in events:
        if isinstance(event, PartStart):
            parts.append((event.headers.get("content-type", ""), b""))
        elif isinstance(event, PartData):
            parts[-1] = (parts[-1][0], parts[-1][1] + bytes(event.data))
    return parts


def audit_count(loaded: Loaded) -> int:
    engine = create_engine(loaded.archive.backend.settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count(AuditEvent.pk)).where(AuditEvent.resource.like("/dicomweb/%"))
                )
                or 0
            )
    finally:
        engine.dispose()


# ---------------------------------------------------------------- instances


@pytest.mark.usefixtures("needs_j2k")
def test_series_and_instances_come_back_byte_exact(loaded: Loaded) -> None:
    for role in ("grey", "j2k", "rle"):
        response = httpx.get(
            f"{loaded.url}/studies/{loaded.study}/series/{loaded.series[role]}",
            headers={"Accept": ANY_SYNTAX},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        parts = multipart_parts(response)
        expected = [loaded.stored[str(ds.SOPInstanceUID)] for ds in loaded.instances[role]]
        assert sorted(content for _, content in parts) == sorted(expected)
        assert all(ctype.startswith("application/dicom") for ctype, _ in parts)

    client = loaded.client()
    study = client.retrieve_study(loaded.study, media_types=(("application/dicom", "*"),))
    assert {str(ds.SOPInstanceUID) for ds in study} == set(loaded.stored)
    j2k = client.retrieve_instance(*loaded.uids("j2k"), media_types=(("application/dicom", "*"),))
    assert j2k.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


@pytest.mark.usefixtures("needs_j2k")
def test_compressed_instance_is_decoded_on_request(loaded: Loaded) -> None:
    client = loaded.client()
    original = loaded.instances["j2k"][0]
    media_types = (("application/dicom", str(ExplicitVRLittleEndian)),)
    got = client.retrieve_instance(*loaded.uids("j2k"), media_types=media_types)
    # no transfer-syntax parameter: the default, Explicit VR Little Endian (PS3.18 8.7.3.5.2)
    default = httpx.get(
        loaded.path("j2k"), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    ((part_type, content),) = multipart_parts(default)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in part_type
    for ds in (got, dcmread(io.BytesIO(content))):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, original.pixel_array)  # lossless
    refused = httpx.get(
        loaded.path("grey"),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert refused.status_code == 406


# ---------------------------------------------------------------- metadata and bulk data


@pytest.mark.usefixtures("needs_j2k")
def test_series_metadata_is_dicom_json_with_resolvable_bulk_data(loaded: Loaded) -> None:
    client = loaded.client()
    documents = client.retrieve_series_metadata(loaded.study, loaded.series["grey"])
    assert len(documents) == 3
    fetched: list[str] = []

    def bulk(tag: str, vr: str, uri: str) -> bytes:
        fetched.append(uri)
        (value,) = client.retrieve_bulkdata(uri)
        return bytes(value)

    datasets = [Dataset.from_json(doc, bulk) for doc in documents]
    assert len(fetched) == 3 and datasets[0].PixelData == loaded.instances["grey"][0].PixelData
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3]
    first = loaded.instances["grey"][0]
    assert datasets[0].SOPInstanceUID == first.SOPInstanceUID
    assert datasets[0].WindowCenter == 0 and datasets[0].Rows == 32
    uri = documents[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(loaded.url + "/studies/")
    (pixels,) = client.retrieve_bulkdata(uri)
    assert pixels == first.PixelData

    study_docs = client.retrieve_study_metadata(loaded.study)
    assert len(study_docs) == len(loaded.stored)
    one = client.retrieve_instance_metadata(*loaded.uids("j2k"))
    assert one["00083002"]["Value"] == ["1.2.840.10008.1.2.4.90"]
    assert "BulkDataURI" in one["7FE00010"]


def test_metadata_etag_and_not_modified(loaded: Loaded) -> None:
    url = f"{loaded.url}/studies/{loaded.study}/series/{loaded.series['grey']}/metadata"
    first = httpx.get(url)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert "no-cache" in first.headers["cache-control"]
    again = httpx.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_metadata_follows_added_replaced_and_old_instances(loaded: Loaded) -> None:
    backend = loaded.archive.backend
    study = loaded.study
    series = generate_uid()
    url = f"{loaded.url}/studies/{study}/series/{series}/metadata"
    first = windowing_slice(study, series, 0)
    ingest(backend, [first])
    before = httpx.get(url)
    assert len(before.json()) == 1

    second = windowing_slice(study, series, 1)
    ingest(backend, [second])
    added = httpx.get(url, headers={"If-None-Match": before.headers["etag"]})
    assert added.status_code == 200 and len(added.json()) == 2

    changed = dcmread(io.BytesIO(part10_bytes(first)))
    changed.SeriesDescription = "REPLACED"
    ingest(backend, [changed], duplicate_policy=DuplicatePolicy.OVERWRITE)
    replaced = httpx.get(url, headers={"If-None-Match": added.headers["etag"]})
    assert replaced.status_code == 200
    docs = {d["00080018"]["Value"][0]: d for d in replaced.json()}
    assert docs[str(first.SOPInstanceUID)]["0008103E"]["Value"] == ["REPLACED"]

    # objects stored before the metadata table existed: documents are built on first read
    engine = create_engine(backend.settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(METADATA))
        backfilled = httpx.get(url)
        assert backfilled.status_code == 200
        assert sorted(map(str, backfilled.json())) == sorted(map(str, replaced.json()))
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(METADATA)) == 2
    finally:
        engine.dispose()


# ---------------------------------------------------------------- frames


def test_native_frames_by_number(loaded: Loaded) -> None:
    frames = loaded.client().retrieve_instance_frames(*loaded.uids("multiframe"), [3, 1])
    size = 16 * 16 * 2
    assert [len(f) for f in frames] == [size, size]
    assert np.all(np.frombuffer(frames[0], "<i2") == 300)
    assert np.all(np.frombuffer(frames[1], "<i2") == 100)


@pytest.mark.usefixtures("needs_j2k")
def test_compressed_frames_as_stored_and_decoded(loaded: Loaded) -> None:
    client = loaded.client()
    original = loaded.instances["j2k"][1]
    (as_stored,) = client.retrieve_instance_frames(
        *loaded.uids("j2k", 1), [1], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),)
    )
    expected = next(generate_frames(original.PixelData, number_of_frames=1))
    assert as_stored.rstrip(b"\0") == expected.rstrip(b"\0")
    (decoded,) = client.retrieve_instance_frames(
        *loaded.uids("j2k", 1),
        [1],
        media_types=(("application/octet-stream", str(ExplicitVRLittleEndian)),),
    )
    assert decoded == original.pixel_array.astype("<i2").tobytes()

    rle = loaded.instances["rle"][0]
    frames = client.retrieve_instance_frames(*loaded.uids("rle"), [2, 1])
    expected_rle = list(generate_frames(rle.PixelData, number_of_frames=2))
    assert frames == [expected_rle[1], expected_rle[0]]
    response = httpx.get(
        f"{loaded.path('rle')}/frames/2", headers={"Accept": "multipart/related; type=image/jpeg"}
    )
    assert response.status_code == 406


# ---------------------------------------------------------------- rendered


def decode(image: bytes) -> Image.Image:
    return Image.open(io.BytesIO(image))


def test_rendered_windowing_sizes_and_formats(loaded: Loaded) -> None:
    client = loaded.client()
    png = decode(client.retrieve_instance_rendered(*loaded.uids("grey")))
    assert png.format == "PNG" and png.size == (32, 32)
    pixels = np.asarray(png.convert("L"))
    assert (
        pixels[0, 0] == 0 and pixels[0, 1] == 255
    )  # object window 0/400: -1000 black, +1000 white
    assert pixels[5, 5] == 128  # 0 HU at the window centre: mid grey

    # a window above both values: everything at or below 1000 is black
    high = decode(
        client.retrieve_instance_rendered(*loaded.uids("grey"), params={"window": "3000,100"})
    )
    assert np.asarray(high.convert("L")).max() == 0

    inverted = np.asarray(
        decode(client.retrieve_instance_rendered(*loaded.uids("mono1"))).convert("L")
    )
    assert inverted[0, 0] == 255 and inverted[0, 1] == 0  # MONOCHROME1 shown inverted

    jpeg = decode(
        client.retrieve_instance_rendered(
            *loaded.uids("grey"),
            media_types=("image/jpeg",),
            params={"quality": "80", "viewport": "16,16"},
        )
    )
    assert jpeg.format == "JPEG" and jpeg.size == (16, 16)

    cropped = decode(
        client.retrieve_instance_rendered(
            *loaded.uids("grey"), params={"viewport": "20,10,0,0,16,8"}
        )
    )
    assert cropped.size == (20, 10)


@pytest.mark.usefixtures("needs_j2k")
def test_rendered_frames_and_thumbnails(loaded: Loaded) -> None:
    client = loaded.client()
    frame = decode(client.retrieve_instance_frames_rendered(*loaded.uids("rle"), [2]))
    assert frame.mode == "RGB" and frame.size == (100, 100)
    original = loaded.instances["rle"][0]
    expected = original.pixel_array[1]
    assert np.array_equal(np.asarray(frame), expected)

    ct = decode(
        client.retrieve_instance_rendered(*loaded.uids("j2k"), params={"viewport": "128,128"})
    )
    assert ct.size == (128, 128)

    for path in (
        f"{loaded.url}/studies/{loaded.study}/thumbnail",
        f"{loaded.url}/studies/{loaded.study}/series/{loaded.series['j2k']}/thumbnail",
        f"{loaded.path('j2k')}/thumbnail",
    ):
        response = httpx.get(path, timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert max(decode(response.content).size) == 128


# ---------------------------------------------------------------- refusals and audit


@pytest.mark.usefixtures("needs_j2k")
def test_bad_requests_are_refused_clearly(loaded: Loaded) -> None:
    audited = audit_count(loaded)
    other_study = generate_uid()
    j2k_series, j2k_instance = loaded.uids("j2k")[1:]
    cases = [
        (f"{loaded.url}/studies/{other_study}", {}, 404),
        (f"{loaded.url}/studies/{other_study}/series/{j2k_series}/metadata", {}, 404),
        (
            f"{loaded.url}/studies/{other_study}/series/{j2k_series}/instances/{j2k_instance}",
            {},
            404,
        ),
        (
            f"{loaded.url}/studies/{loaded.study}/series/{j2k_series}/instances/{generate_uid()}/metadata",
            {},
            404,
        ),
        (f"{loaded.url}/studies/not-a-uid/metadata", {}, 400),
        (f"{loaded.path('multiframe')}/frames/0", {}, 400),
        (f"{loaded.path('multiframe')}/frames/1,x", {}, 400),
        (f"{loaded.path('multiframe')}/frames/4", {}, 400),
        (f"{loaded.path('grey')}/rendered?window=abc", {}, 400),
        (f"{loaded.path('grey')}/rendered?viewport=0,0", {}, 400),
        (f"{loaded.path('grey')}/rendered?quality=101", {}, 400),
        (f"{loaded.path('grey')}/bulk/7FE0", {}, 400),
        (f"{loaded.path('grey')}/bulk/00091001", {}, 404),
        (f"{loaded.path('grey')}/metadata", {"Accept": "text/html"}, 406),
        (f"{loaded.path('grey')}/rendered", {"Accept": "image/gif"}, 406),
        (loaded.path("grey"), {"Accept": "application/json"}, 406),
    ]
    for url, headers, status in cases:
        response = httpx.get(url, headers=headers)
        assert response.status_code == status, (url, headers, response.status_code, response.text)
        assert response.json()["detail"]
    assert audit_count(loaded) == audited + len(cases)
