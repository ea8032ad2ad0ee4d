"""The acceptance rule (pacs/ingest/acceptance.py) at every entry point: ingest itself,
C-STORE (DCMTK storescu and pynetdicom), STOW-RS and ``pacs import``, on SQLite + filesystem
and PostgreSQL + S3; and WADO-RS for images stored without Pixel Data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from pacs.config import Settings
from pacs.dimse import status
from pacs.dimse.ae import build_ae
from pacs.dimse.policy import AEPolicy
from pacs.index.models import Instance
from pacs.ingest import StoreStatus
from pacs.ingest.acceptance import (
    STORAGE_SOP_CLASSES,
    AcceptanceWarning,
    as_part10,
    expected_pixel_bytes,
)
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend, RunningArchive, require_tool
from tests.dimse_tools import archive_view, pynetdicom_store, storescu, write_part10
from tests.test_ingest import SOURCE, encode_as_is, ingest_for, rows
from tests.test_stow import MULTIPART, multipart
from tests.wado_data import module_archive

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


def small(**attributes: object) -> Dataset:
    """An 8 x 8 CT slice of its own study, with some attributes changed."""
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if "SOPClassUID" in attributes:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def without_pixels() -> Dataset:
    ds = small()
    del ds.PixelData
    return ds


def pixels(delta: int) -> Callable[[], Dataset]:
    def make() -> Dataset:
        ds = small()
        data = bytes(ds.PixelData)
        ds.PixelData = data[:delta] if delta < 0 else data + b"\0" * delta
        return ds

    return make


def one_bit(rows: int, columns: int, frames: int, extra: int = 0) -> Dataset:
    """A 1-bit BINARY segmentation-like image whose frames need not end on a byte."""
    ds = small(SOPClassUID=SEGMENTATION, Modality="SEG")
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    length = (rows * columns * frames + 7) // 8
    ds.PixelData = bytes(range(7, 7 + length)) + b"\0" * (length % 2 + extra)
    return ds


# ---------------------------------------------------------------- the rule itself


def test_storage_sop_classes_include_retired_ones_and_match_the_association() -> None:
    assert US_RETIRED in STORAGE_SOP_CLASSES
    assert "1.2.840.10008.5.1.4.1.1.88.70" in STORAGE_SOP_CLASSES  # Implantation Plan SR
    assert "1.2.840.10008.5.1.4.1.1.3" in STORAGE_SOP_CLASSES  # US Multi-frame (Retired)
    assert CTImageStorage in STORAGE_SOP_CLASSES
    for not_storage in ("1.2.840.10008.1.20.1", "1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.38.1"):
        assert not_storage not in STORAGE_SOP_CLASSES  # commitment, DICOMDIR, hanging protocol
    ae = build_ae(Settings(), AEPolicy([], accept_any=True))
    storage = {str(cx.abstract_syntax) for cx in ae.supported_contexts if cx.scp_role}
    assert storage == STORAGE_SOP_CLASSES


def test_expected_pixel_bytes() -> None:
    assert expected_pixel_bytes(small()) == 8 * 8 * 2
    bad = get_testdata_file("badVR.dcm")  # NumberOfFrames "1A": not checked
    assert bad is None or expected_pixel_bytes(dcmread(bad, stop_before_pixels=True)) is None
    assert expected_pixel_bytes(one_bit(5, 5, 3)) == 10  # 75 bits packed
    rgb = small(SamplesPerPixel=3, BitsAllocated=8, NumberOfFrames=2)
    assert expected_pixel_bytes(rgb) == 8 * 8 * 3 * 2
    rgb.PhotometricInterpretation = "YBR_FULL_422"
    assert expected_pixel_bytes(rgb) == 8 * 8 * 2 * 2


def test_as_part10_supplies_a_missing_preamble() -> None:
    whole = encode_as_is(small())
    assert as_part10(whole[128:]) == whole
    assert as_part10(whole[132:]) == whole  # no "DICM" either (pydicom without a preamble)
    assert as_part10(whole) is whole


# ---------------------------------------------------------------- ingest (every entry point)


STORED: dict[str, Callable[[], Dataset]] = {
    "retired US Image Storage": lambda: small(SOPClassUID=US_RETIRED, Modality="US"),
    "image without Pixel Data": without_pixels,
    "odd length with its pad byte": lambda: one_bit(3, 3, 1),  # 9 bits: 2 bytes
    "1-bit frames across bytes": lambda: one_bit(5, 5, 3),
    "Pixel Data with trailing padding": pixels(4),
    "1-bit Pixel Data with trailing padding": lambda: one_bit(5, 5, 3, extra=2),
    "Pixel Data without Rows": lambda: _deleted(small(), "Rows"),  # not checked
}
REFUSED: dict[str, tuple[Callable[[], Dataset], StoreStatus, str]] = {
    "Pixel Data too short": (pixels(-10), StoreStatus.INVALID, "Pixel Data is 118 bytes"),
    "unknown SOP Class": (
        lambda: small(SOPClassUID="1.2.826.0.1.3680043.10.1.99"),
        StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        "not a storage SOP class",
    ),
    "Storage Commitment as SOP Class": (
        lambda: small(SOPClassUID="1.2.840.10008.1.20.1"),
        StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        "Storage Commitment Push Model",
    ),
    "no SOP Class": (
        lambda: _deleted(small(), "SOPClassUID"),
        StoreStatus.INVALID,
        "SOPClassUID is missing",
    ),
}


def _deleted(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def test_ingest_applies_the_rule(backend: Backend) -> None:
    ingest = ingest_for(backend)
    for name, make in STORED.items():
        outcome = ingest.store_part10(encode_as_is(make()), SOURCE)
        assert outcome.status is StoreStatus.STORED, (name, outcome)
        assert outcome.warnings == (), name
    for name, (make, expected, reason) in REFUSED.items():
        outcome = ingest.store_part10(encode_as_is(make()), SOURCE)
        assert outcome.status is expected, (name, outcome)
        assert reason in outcome.reason, (name, outcome.reason)
    assert len(rows(backend.settings, Instance)) == len(STORED)


def test_preamble_less_file_is_stored_with_a_preamble(backend: Backend) -> None:
    whole = encode_as_is(small())
    outcome = ingest_for(backend).store_part10(whole[128:], SOURCE)
    assert outcome.status is StoreStatus.STORED
    with archive_view(backend.settings) as view:
        assert view.read(outcome.sop_instance_uid) == whole  # zero preamble supplied


def test_file_meta_naming_another_instance_is_stored_under_the_data_sets(
    backend: Backend,
) -> None:
    ds = small()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    data = encode_as_is(ds)
    outcome = ingest_for(backend).store_part10(data, SOURCE)
    assert outcome.status is StoreStatus.STORED
    assert outcome.sop_instance_uid == ds.SOPInstanceUID
    assert set(outcome.warnings) == set(AcceptanceWarning)
    with archive_view(backend.settings) as view:
        [instance] = view.instances().values()
        assert instance.sop_instance_uid == ds.SOPInstanceUID
        assert instance.sop_class_uid == CTImageStorage
        assert view.read(ds.SOPInstanceUID) == data  # byte-exact, file meta as sent


# ---------------------------------------------------------------- a running archive


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql-s3"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningArchive]:
    yield from module_archive(request, tmp_path_factory)


def test_c_store_with_storescu(running: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    files = {
        name: write_part10(tmp_path / f"{i}.dcm", make())
        for i, (name, make) in enumerate(STORED.items())
    }
    refused = {
        name: write_part10(tmp_path / f"r{i}.dcm", make())
        for i, (name, (make, _, _)) in enumerate(REFUSED.items())
        if "SOP Class" not in name
    }
    # -R: propose only the SOP classes of the files (the retired one included)
    result = storescu(running.dicom_port, [*files.values(), *refused.values()], "-R")
    for name, path in files.items():
        assert result.statuses.get(path) == "Success", (name, result.output[-3000:])
    for name, path in refused.items():
        answer = result.statuses.get(path, "")
        assert answer.startswith("Error"), (name, answer)
    assert "Pixel Data is 118 bytes" in result.output or "Error" in result.output


def test_c_store_statuses_and_comments(running: RunningArchive, tmp_path: Path) -> None:
    """pynetdicom sends a file with the file meta's UIDs in the request: the data set's win,
    with a warning; a data set of no storage class is refused 0x0122; bad pixel data 0xC000."""
    mismatch = small()
    mismatch.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    unknown = small()
    unknown.SOPClassUID = "1.2.826.0.1.3680043.10.1.99"  # the file meta still says CT
    short = pixels(-10)()
    files = []
    for name, ds in (("mismatch", mismatch), ("unknown", unknown), ("short", short)):
        files.append(tmp_path / f"{name}.dcm")
        files[-1].write_bytes(encode_as_is(ds))
    answers = pynetdicom_store(running.dicom_port, files, [(CTImageStorage, "1.2.840.10008.1.2.1")])
    [(code, comment), (unknown_code, unknown_comment), (short_code, short_comment)] = answers
    assert code == status.COERCION_OF_DATA_ELEMENTS, hex(code)
    assert "SOPInstanceUID" in comment
    assert unknown_code == status.SOP_CLASS_NOT_SUPPORTED, hex(unknown_code)
    assert "not a storage SOP class" in unknown_comment
    assert short_code == status.CANNOT_UNDERSTAND and "Pixel Data is 118" in short_comment
    with archive_view(running.backend.settings) as view:
        assert mismatch.SOPInstanceUID in view.instances()


def test_stow_applies_the_rule(running: RunningArchive) -> None:
    parts = [encode_as_is(make()) for make in STORED.values()]
    refused = [encode_as_is(make()) for make, _, _ in REFUSED.values()]
    response = httpx.post(
        f"{running.http}/dicomweb/studies",
        content=multipart(*parts, *refused, encode_as_is(small())[128:]),
        headers={"Content-Type": MULTIPART},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    referenced = body["00081199"]["Value"]
    failed = body["00081198"]["Value"]
    assert len(referenced) == len(parts) + 1
    reasons = sorted(item["00081197"]["Value"][0] for item in failed)
    expected = sorted(
        status.SOP_CLASS_NOT_SUPPORTED
        if outcome is StoreStatus.SOP_CLASS_NOT_SUPPORTED
        else status.CANNOT_UNDERSTAND
        for _, outcome, _ in REFUSED.values()
    )
    assert reasons == expected


def test_import_applies_the_rule(running: RunningArchive, tmp_path: Path) -> None:
    folder = tmp_path / "import"
    folder.mkdir()
    for i, make in enumerate(STORED.values()):
        (folder / f"s{i}.dcm").write_bytes(encode_as_is(make()))
    (folder / "no-preamble.dcm").write_bytes(encode_as_is(small())[128:])
    for i, (make, _, _) in enumerate(REFUSED.values()):
        (folder / f"r{i}.dcm").write_bytes(encode_as_is(make()))
    env = {**os.environ, **running.backend.env, "COLUMNS": "2000", "NO_COLOR": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("rejected /") == len(REFUSED), run.stderr
    assert "Pixel Data is 118 bytes" in run.stderr
    assert "sop_class_not_supported" in run.stderr
    stored = [line for line in run.stderr.splitlines() if line.strip().startswith("│ stored")]
    assert stored and stored[0].split("│")[2].strip() == str(len(STORED) + 1), run.stderr


def test_wado_answers_4xx_for_an_image_without_pixel_data(running: RunningArchive) -> None:
    ds = without_pixels()
    response = httpx.post(
        f"{running.http}/dicomweb/studies",
        content=multipart(encode_as_is(ds)),
        headers={"Content-Type": MULTIPART},
    )
    assert response.status_code == 200, response.text
    path = (
        f"{running.http}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for suffix in ("/frames/1", "/rendered", "/frames/1/rendered", "/thumbnail"):
        answer = httpx.get(path + suffix)
        assert answer.status_code == 404, (suffix, answer.status_code)
        assert "no pixel data" in answer.json()["detail"], suffix
    whole = httpx.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert whole.status_code == 200
