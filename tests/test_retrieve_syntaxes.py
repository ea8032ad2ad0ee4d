"""Retrieve in the syntax the archive can serve: C-GET of lossy and lossless JPEG 2000
(pynetdicom and DCMTK getscu), WADO-RS frames of a 1-bit segmentation, rendered deflated
objects, frames of objects without pixel data, and the STOW-RS RetrieveURL that
dicomweb-client gets. SQLite + filesystem and PostgreSQL + S3."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from pacs.dimse.scu import sending_syntax
from testkit.dicom_factory import ct_slice
from tests.conftest import RunningArchive, require, require_tool
from tests.dimse_tools import dataset_part
from tests.test_acceptance import one_bit
from tests.test_ingest import encode_as_is
from tests.test_stow import MULTIPART, multipart
from tests.wado_data import module_archive


def pydicom_file(name: str) -> Dataset:
    path = get_testdata_file(name)
    require(path is not None, f"pydicom test file {name} missing")
    ds = dcmread(str(path))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = f"SYNTAX-{ds.SOPInstanceUID[-6:]}"
    return ds


def deflated() -> Dataset:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16, patient_id="DEFLATED-1")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def text_sr() -> Dataset:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=8, patient_id="SR-1")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelData"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.Modality = "SR"
    return ds


OBJECTS = {
    "lossy j2k": lambda: pydicom_file("JPEG2000.dcm"),
    "lossless j2k": lambda: pydicom_file("MR_small_jp2klossless.dcm"),
    "seg": lambda: one_bit(5, 5, 3),
    "deflated": deflated,
    "sr": text_sr,
}


class Loaded:
    def __init__(self, archive: RunningArchive, objects: dict[str, Dataset]) -> None:
        self.archive = archive
        self.objects = objects
        self.encoded = {role: encode_as_is(ds) for role, ds in objects.items()}  # as stored

    def path(self, role: str) -> str:
        ds = self.objects[role]
        return (
            f"{self.archive.http}/dicomweb/studies/{ds.StudyInstanceUID}"
            f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql-s3"])
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    for archive in module_archive(request, tmp_path_factory):
        objects = {role: make() for role, make in OBJECTS.items()}
        result = Loaded(archive, objects)
        response = httpx.post(
            f"{archive.http}/dicomweb/studies",
            content=multipart(*result.encoded.values()),
            headers={"Content-Type": MULTIPART},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield result


# ---------------------------------------------------------------- C-GET


def c_get(archive: RunningArchive, ds: Dataset, contexts: list[list[str]]) -> list[Any]:
    """C-GET one instance, the requestor proposing ``contexts`` (each a list of transfer
    syntaxes) for its SOP class; the (transfer syntax, data set bytes) received, and the
    final status."""
    received: list[tuple[str, bytes]] = []

    def on_store(event: Any) -> int:
        received.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for syntaxes in contexts:
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        archive.dicom_port,
        ae_title="PACS",
        ext_neg=[build_role(ds.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = ds.StudyInstanceUID
    identifier.SeriesInstanceUID = ds.SeriesInstanceUID
    identifier.SOPInstanceUID = ds.SOPInstanceUID
    try:
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            if status is not None and "Status" in status
        ]
    finally:
        assoc.release()
    return [received, statuses[-1] if statuses else -1]


def test_sending_syntax_prefers_what_serves_every_object() -> None:
    supported = [str(JPEG2000Lossless), str(JPEG2000), str(ExplicitVRLittleEndian)]
    offered = [str(JPEG2000Lossless), str(JPEG2000), str(ExplicitVRLittleEndian)]
    assert sending_syntax(offered, supported) == ExplicitVRLittleEndian
    assert sending_syntax([str(JPEG2000Lossless), str(JPEG2000)], supported) == JPEG2000
    assert sending_syntax([str(JPEG2000Lossless)], supported) == JPEG2000Lossless


def test_c_get_lossy_j2k_offered_in_one_context_is_decoded(loaded: Loaded) -> None:
    """A lossless J2K context was accepted here before, and the lossy object failed (A702)."""
    ds = loaded.objects["lossy j2k"]
    offer = [str(JPEG2000Lossless), str(JPEG2000), str(ExplicitVRLittleEndian)]
    [received, final] = c_get(loaded.archive, ds, [offer])
    assert final == 0x0000, hex(final)
    [(syntax, data)] = received
    assert syntax == ExplicitVRLittleEndian
    assert len(data) > len(dataset_part(loaded.encoded["lossy j2k"]))  # decoded


def test_c_get_sends_stored_bytes_when_their_syntax_is_offered_alone(loaded: Loaded) -> None:
    ds = loaded.objects["lossy j2k"]
    contexts = [[str(JPEG2000Lossless)], [str(JPEG2000)], [str(ExplicitVRLittleEndian)]]
    [received, final] = c_get(loaded.archive, ds, contexts)
    assert final == 0x0000, hex(final)
    assert received == [(JPEG2000, dataset_part(loaded.encoded["lossy j2k"]))]


def test_c_get_sends_lossless_j2k_on_a_j2k_context(loaded: Loaded) -> None:
    """A lossless J2K bitstream is a valid JPEG 2000 (.91) one: sent as it is stored."""
    ds = loaded.objects["lossless j2k"]
    [received, final] = c_get(loaded.archive, ds, [[str(JPEG2000)]])
    assert final == 0x0000, hex(final)
    assert received == [(JPEG2000, dataset_part(loaded.encoded["lossless j2k"]))]


def test_getscu_preferring_lossy_j2k_gets_the_lossy_object(loaded: Loaded, tmp_path: Path) -> None:
    binary = require_tool("getscu")
    ds = loaded.objects["lossy j2k"]
    args = [binary, "-v", "-S", "+xw", "-aet", "GETSCU", "-aec", "PACS", "-od", str(tmp_path)]
    args += ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}"]
    args += ["-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}"]
    args += ["-k", f"SOPInstanceUID={ds.SOPInstanceUID}"]
    args += ["127.0.0.1", str(loaded.archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert "Completed Suboperations : 1" in run.stderr, run.stderr + loaded.archive.log()
    [path] = tmp_path.iterdir()
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID


# ---------------------------------------------------------------- WADO-RS


def test_frames_of_a_one_bit_segmentation_are_the_stored_bits(loaded: Loaded) -> None:
    ds = loaded.objects["seg"]
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
    client = DICOMwebClient(url=f"{loaded.archive.http}/dicomweb")
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    for accept in ("*", None):
        media = [("application/octet-stream", accept)] if accept else None
        frames = client.retrieve_instance_frames(*uids, [1, 2, 3], media_types=media)
        for number, frame in enumerate(frames, start=1):
            expected = np.packbits(bits[(number - 1) * 25 : number * 25], bitorder="little")
            assert frame == expected.tobytes(), (accept, number)


def test_rendered_and_thumbnail_of_a_deflated_object(loaded: Loaded) -> None:
    ds = loaded.objects["deflated"]
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        response = httpx.get(loaded.path("deflated") + suffix, timeout=30)
        assert response.status_code == 200, (suffix, response.text)
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
    client = DICOMwebClient(url=f"{loaded.archive.http}/dicomweb")
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    [frame] = client.retrieve_instance_frames(*uids, [1])
    assert frame == ds.PixelData


def test_frames_of_a_non_image_object_are_404_with_a_reason(loaded: Loaded) -> None:
    for suffix in ("/frames/1", "/rendered", "/thumbnail"):
        response = httpx.get(loaded.path("sr") + suffix, timeout=30)
        assert response.status_code == 404, (suffix, response.status_code)
        assert response.json()["detail"] == "the instance has no pixel data"


# ---------------------------------------------------------------- STOW-RS RetrieveURL


def test_retrieve_url_keeps_the_port_dicomweb_client_leaves_out(loaded: Loaded) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` without the port."""
    port = loaded.archive.http_port
    client = DICOMwebClient(url=f"http://127.0.0.1:{port}/dicomweb")
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=8, patient_id="URL-1")
    response = client.store_instances([ds])  # written without a preamble, as pydicom does
    expected = f"http://127.0.0.1:{port}/dicomweb/studies/{ds.StudyInstanceUID}"
    assert response.RetrieveURL == expected
    [item] = response.ReferencedSOPSequence
    assert item.RetrieveURL.startswith(expected + "/series/")
    localhost = DICOMwebClient(url=f"http://localhost:{port}/dicomweb")
    other = ct_slice(generate_uid(), generate_uid(), 0, size=8, patient_id="URL-2")
    answer = localhost.store_instances([other])
    assert answer.RetrieveURL.startswith(f"http://localhost:{port}/dicomweb/studies/")
