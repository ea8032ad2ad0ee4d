"""What senders get wrong: truncated or garbage objects, hostile UIDs, oversize objects,
dropped associations, and duplicates under each policy.

Every refusal is a failure status with a reason, leaves no index row and no object, and the
server keeps serving the next sender.
"""

from __future__ import annotations

import copy
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from testkit.dicom_factory import ct_slice, write_ct_series
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.dimse_tools import (
    SUCCESS,
    DicomProxy,
    archive_view,
    dataset_part,
    echoscu,
    part10_bytes,
    pynetdicom_store,
    storescu,
    write_part10,
)

FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC000
WARNING_COERCION = 0xB000
CT = [(CTImageStorage, ExplicitVRLittleEndian)]

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def _slice(size: int = 64, **attributes: object) -> pydicom.Dataset:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=size)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _assert_still_serving(archive: RunningArchive, tmp_path: Path) -> None:
    """C-ECHO and a good C-STORE work; the good object is the only thing stored."""
    echo = echoscu(archive.dicom_port)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    good = write_part10(tmp_path / "good" / "good.dcm", _slice())
    result = storescu(archive.dicom_port, [good])
    assert result.statuses == {good: "Success"}, result.output[-2000:]


def _assert_empty(archive: RunningArchive) -> None:
    with archive_view(archive.backend.settings) as view:
        assert view.instances() == {}
        assert view.object_keys() == set()
        assert view.studies() == {}


def _pacs_import(backend: Backend, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **backend.env, "COLUMNS": "2000", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_truncated_and_garbage_objects_are_refused(archive: RunningArchive, tmp_path: Path) -> None:
    whole = part10_bytes(_slice(size=128))
    pixels_at = whole.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    folder = tmp_path / "bad"
    folder.mkdir()
    # a cut just before (7FE0,0010) leaves an image without Pixel Data, which is stored
    # (the acceptance rule, tests/test_acceptance.py)
    cuts = {
        "mid-pixels.dcm": len(whole) - 7777,  # most of the image is missing
        "last-byte.dcm": len(whole) - 1,
        "mid-pixel-header.dcm": pixels_at + 5,
        "mid-header.dcm": pixels_at - 9,  # inside an attribute before the pixels
    }
    for name, cut in cuts.items():
        (folder / name).write_bytes(whole[:cut])
    # the meta of a real file, then random bytes where the data set should be
    meta_end = len(whole) - len(dataset_part(whole))
    rng = random.Random(7)
    garbage = whole[:meta_end] + bytes(rng.getrandbits(8) for _ in range(20000))
    (folder / "garbage-dataset.dcm").write_bytes(garbage)
    sent = sorted(folder.iterdir())

    for path, (status, comment) in zip(
        sent, pynetdicom_store(archive.dicom_port, sent, CT), strict=True
    ):
        assert status == FAILURE_CANNOT_UNDERSTAND, (path.name, hex(status), comment)
        assert comment, path.name
        if path.name != "garbage-dataset.dcm":
            assert "truncated" in comment or "incomplete" in comment, (path.name, comment)

    # pacs import of the same files plus bytes that are no DICOM at all
    (folder / "random.bin").write_bytes(bytes(rng.getrandbits(8) for _ in range(5000)))
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "only-preamble.dcm").write_bytes(whole[:132])
    imported = _pacs_import(archive.backend, folder)
    assert imported.returncode == 1, imported.stdout + imported.stderr
    not_dicom = {"random.bin", "empty.dcm"}  # skipped and counted, not refused (issue 20)
    for path in folder.iterdir():
        refused = f"rejected {path}:" in imported.stderr
        assert refused == (path.name not in not_dicom), path.name
    assert re.search(r"skipped \(not DICOM\)\s*\S\s*2\b", imported.stderr), imported.stderr
    _assert_empty(archive)
    _assert_still_serving(archive, tmp_path)


HOSTILE_UIDS = [
    "1.2.3/../../x",
    "../../../../tmp/pacs-escape",
    "1.2.840.10008/1",
    "1.2.3.abc",
    "1.02.3",  # leading zero in a component
    "1.2." + "3" * 70,  # longer than 64 characters
    "1.2.3\\1.2.4",  # two values
    "1.2.3 .4",
]


def test_hostile_uids_are_refused(archive: RunningArchive, tmp_path: Path) -> None:
    items: list[tuple[str, Path | pydicom.Dataset]] = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        for i, uid in enumerate(HOSTILE_UIDS):
            ds = _slice(size=16)
            setattr(ds, keyword, uid)
            if keyword != "SOPInstanceUID":
                items.append((keyword, ds))
                continue
            # the file meta (so the C-STORE request) keeps its valid UID, the data set has the
            # hostile one: the file is sent raw, as it is
            ds.preamble = b"\0" * 128
            path = tmp_path / "hostile" / f"{i}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=False)  # the meta as it is
            items.append((keyword, path))
    # and requests whose Affected SOP Instance UID itself is hostile
    for uid in HOSTILE_UIDS[:4]:
        ds = _slice(size=16)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        items.append(("SOPInstanceUID", ds))

    answers = pynetdicom_store(archive.dicom_port, [item for _, item in items], CT)
    for (keyword, item), (status, comment) in zip(items, answers, strict=True):
        assert status == FAILURE_CANNOT_UNDERSTAND, (keyword, item, hex(status))
        assert f"{keyword} is not a valid UID" in comment, comment
    _assert_empty(archive)
    escaped = list(Path("/tmp").glob("pacs-escape*"))
    escaped += [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name == "x"]
    assert not escaped, escaped
    _assert_still_serving(archive, tmp_path)


def test_oversize_object_is_refused(backend: Backend, tmp_path: Path) -> None:
    require_tool("storescu")
    running = start_archive(backend, tmp_path / "serve.log", PACS_MAX_OBJECT_SIZE="40000")
    try:
        small = write_part10(tmp_path / "in" / "small.dcm", _slice(size=64))  # ~9 KB
        big = write_part10(tmp_path / "in" / "big.dcm", _slice(size=256))  # ~131 KB
        with DicomProxy(running.dicom_port) as proxy:
            result = storescu(proxy.port, [big, small])
        wire = proxy.by_message_id()
        assert result.statuses[small] == "Success", result.output[-2000:]
        refused = wire[result.message_ids[big]]
        assert refused.status == FAILURE_OUT_OF_RESOURCES
        assert "40000" in refused.error_comment, refused.error_comment
        with archive_view(backend.settings) as view:
            rows = view.assert_consistent()
            assert set(rows) == {pydicom.dcmread(small).SOPInstanceUID}
        assert echoscu(running.dicom_port).returncode == 0
    finally:
        stop_archive(running)


def test_association_dropped_mid_transfer(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    files = write_ct_series(tmp_path / "ct", slices=3, size=512)  # ~512 KB each
    # the proxy resets both sides after 200 KB of the second data set went through
    with DicomProxy(archive.dicom_port, cut_message=2, cut_after=200_000) as proxy:
        result = storescu(proxy.port, files)
    assert proxy.cut.is_set(), "the transfer ended before the cut"
    assert result.statuses.get(files[0]) == "Success", result.output[-2000:]
    assert files[1] not in result.succeeded and files[2] not in result.succeeded
    assert f"Store Failed, file: {files[1]}" in result.output, result.output[-2000:]

    # raw sockets: garbage instead of an A-ASSOCIATE-RQ, a cut-off one, and a silent close
    for payload in (b"\x47\x45\x54 / HTTP/1.1\r\n\r\n", b"\x01\x00\x00\x00\x00\xcd\x00\x01", b""):
        with socket.create_connection(("127.0.0.1", archive.dicom_port), timeout=10) as sock:
            sock.sendall(payload)

    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()  # no object without a row: nothing half-stored
        assert set(rows) == {uid}
        assert dataset_part(view.read(uid)) == dataset_part(files[0].read_bytes())
    _assert_still_serving(archive, tmp_path)
    log = archive.log()
    assert "dropped" in log  # the cut association is logged, without a traceback
    assert "C-STORE failed" not in log


def _store_one(port: int, path: Path) -> tuple[int, str]:
    with DicomProxy(port) as proxy:
        result = storescu(proxy.port, [path])
    [exchange] = proxy.exchanges
    assert exchange.status is not None, result.output[-2000:]
    return exchange.status, exchange.error_comment


def _twins(folder: Path) -> tuple[Path, Path]:
    """Two different objects with one SOP Instance UID (other pixel data)."""
    first = _slice(size=32)
    second = copy.deepcopy(first)
    second.PixelData = bytes(len(first.PixelData))
    return write_part10(folder / "first.dcm", first), write_part10(folder / "second.dcm", second)


def test_duplicates_under_the_default_policy(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("storescu")
    first, second = _twins(tmp_path / "twins")
    port = archive.dicom_port
    assert _store_one(port, first) == (SUCCESS, "")
    assert _store_one(port, first) == (SUCCESS, "")  # identical re-send: idempotent
    status, comment = _store_one(port, second)
    assert status == FAILURE_DUPLICATE_SOP_INSTANCE
    assert "SOP Instance UID" in comment
    with archive_view(archive.backend.settings) as view:
        [(uid, row)] = view.assert_consistent().items()
        assert dataset_part(view.read(uid)) == dataset_part(first.read_bytes())
        [series] = view.series().values()
        [study] = view.studies().values()
        assert series.number_of_series_related_instances == 1
        assert study.number_of_study_related_instances == 1
        assert study.size_bytes == row.size_bytes


def test_duplicates_under_overwrite_and_keep(backend: Backend, tmp_path: Path) -> None:
    require_tool("storescu")
    log = tmp_path / "serve.log"
    running = start_archive(backend, log, PACS_DUPLICATE_POLICY="overwrite")
    try:
        first, second = _twins(tmp_path / "overwrite")
        assert _store_one(running.dicom_port, first) == (SUCCESS, "")
        assert _store_one(running.dicom_port, second) == (SUCCESS, "")
        assert _store_one(running.dicom_port, second) == (SUCCESS, "")
        with archive_view(backend.settings) as view:
            [(uid, row)] = view.assert_consistent().items()
            assert dataset_part(view.read(uid)) == dataset_part(second.read_bytes())
            [study] = view.studies().values()
            assert study.number_of_study_related_instances == 1
            assert study.size_bytes == row.size_bytes
    finally:
        stop_archive(running)

    running = start_archive(backend, log, PACS_DUPLICATE_POLICY="keep")
    try:
        first, second = _twins(tmp_path / "keep")
        assert _store_one(running.dicom_port, first) == (SUCCESS, "")
        status, comment = _store_one(running.dicom_port, second)
        assert status == WARNING_COERCION and "SOP Instance UID" in comment
        uid = pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID
        with archive_view(backend.settings) as view:
            rows = view.assert_consistent()
            assert len(rows) == 2  # the overwritten one above and this one
            assert dataset_part(view.read(uid)) == dataset_part(first.read_bytes())
    finally:
        stop_archive(running)
