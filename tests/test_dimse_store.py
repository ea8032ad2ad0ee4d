"""C-ECHO and C-STORE from DCMTK and pynetdicom: pydicom's whole test corpus and real CT.

Every file that is a storable object is stored and reads back byte-exact; every file that is
not gets a failure status and leaves neither an index row nor an object behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs.dimse.part10 import part10
from pacs.importer import DICM_PREFIX, is_dicom_dataset, is_dicomdir
from pacs.ingest.sameness import same_data_set
from tests.conftest import Backend, RunningArchive, require, require_tool
from tests.dimse_tools import (
    PYDICOM_TEST_FILES,
    SUCCESS,
    CorpusFile,
    DicomProxy,
    archive_view,
    blank_uid_ct,
    classify,
    corpus_paths,
    dataset_part,
    echoscu,
    highdicom_objects,
    pynetdicom_store,
    storescu,
    storescu_profile,
)

FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111
FAILURE_CANNOT_UNDERSTAND = 0xC000
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def corpus() -> dict[Path, CorpusFile]:
    """The corpus files, classified once."""
    require(PYDICOM_TEST_FILES.is_dir(), "pydicom's test files are not installed")
    return {path: classify(path) for path in corpus_paths()}


def _is_failure(status: int) -> bool:
    """PS3.7 C.4.2.1.4: failure statuses are 0xA7xx, 0xA9xx, 0xCxxx and 0x01xx."""
    return status & 0xF000 in (0xA000, 0xC000) or status & 0xFF00 == 0x0100


def _blank_ct() -> list[Path]:
    folder = blank_uid_ct()
    files = sorted(folder.iterdir())
    require(len(files) == 20, f"expected the 20-slice CT under {folder}")
    return files


def test_dcmtk_sends_the_corpus(
    archive: RunningArchive, corpus: dict[Path, CorpusFile], tmp_path: Path
) -> None:
    require_tool("storescu")
    require_tool("echoscu")
    echo = echoscu(archive.dicom_port)
    assert echo.returncode == 0, echo.stdout + echo.stderr

    profile = storescu_profile(corpus.values(), tmp_path / "corpus.cfg")
    with DicomProxy(archive.dicom_port) as proxy:
        result = storescu(
            proxy.port,
            [PYDICOM_TEST_FILES, highdicom_objects(), blank_uid_ct()],
            "+sd",
            "+r",
            "-xf",
            str(profile),
            "Corpus",
            timeout=240,
        )
    wire = proxy.by_message_id()
    assert result.message_ids, result.output[-3000:]
    assert len(wire) == len(result.message_ids), "proxy and storescu disagree on what was sent"

    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        objects = {uid: view.store.get(row.object_key) for uid, row in rows.items()}
        stored = {uid: dataset_part(data) for uid, data in objects.items()}

    success_uids: set[str] = set()
    problems: list[str] = []
    sent_valid = sent_invalid = 0
    for path, message_id in sorted(result.message_ids.items(), key=lambda item: item[1]):
        info, exchange = corpus[path], wire[message_id]
        status = exchange.status
        assert status is not None, f"{path.name}: no C-STORE response on the wire"
        uid = exchange.sop_instance_uid
        if info.uids_valid:
            sent_valid += 1
            if status == SUCCESS:
                success_uids.add(uid)
                # pydicom's corpus also has one data set in two byte orders: the second is an
                # identical re-send of the first (same elements and values), answered success
                sent = part10(
                    exchange.dataset, info.sop_class_uid, uid, info.transfer_syntax_uid, ""
                )
                if stored.get(uid) != exchange.dataset and not same_data_set(objects[uid], sent):
                    problems.append(f"{path.name}: stored data set differs from what was sent")
            elif status == FAILURE_DUPLICATE_SOP_INSTANCE:
                # pydicom's corpus has one SOP Instance UID in several encodings: the first
                # stored stays, every different object with that UID is refused
                if uid not in success_uids or stored.get(uid) == exchange.dataset:
                    problems.append(f"{path.name}: 0x0111 without a different stored object")
            else:
                problems.append(f"{path.name}: valid object answered 0x{status:04X}")
        else:
            sent_invalid += 1
            if not _is_failure(status) or not exchange.error_comment:
                problems.append(f"{path.name}: invalid object answered 0x{status:04X}")
            if uid and uid in stored and uid not in success_uids:
                problems.append(f"{path.name}: invalid object left an index row")
    assert not problems, "\n".join(problems)
    assert set(rows) == success_uids, "index rows that no success acknowledged"
    assert sent_valid >= 100 and sent_invalid >= 3, (sent_valid, sent_invalid)
    blank = set(_blank_ct())
    assert not blank & result.succeeded  # storescu refuses them (no SOP Class UID) or fails
    # files storescu itself refuses to send (it cannot parse them or finds no SOP Instance UID)
    refused = sorted(p.name for p in result.not_sent if p in corpus and corpus[p].valid)
    print(f"storescu did not send {len(result.not_sent)} files; valid among them: {refused}")
    assert len(result.message_ids) + len(result.not_sent) == len(corpus), "unaccounted files"


def _pacs_import(backend: Backend, *paths: Path) -> tuple[int, dict[Path, str]]:
    """Run ``pacs import``; return its exit code and the rejected files with their reasons."""
    env = {**os.environ, **backend.env, "COLUMNS": "2000", "NO_COLOR": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    rejected = {}
    for line in (run.stdout + run.stderr).splitlines():
        if m := re.match(r"^rejected (/.+?): (.*)$", line):
            rejected[Path(m.group(1))] = m.group(2)
    assert run.returncode in (0, 1), run.stdout + run.stderr
    return run.returncode, rejected


def test_import_stores_the_corpus_byte_exact(
    backend: Backend, corpus: dict[Path, CorpusFile]
) -> None:
    code, rejected = _pacs_import(backend, PYDICOM_TEST_FILES, highdicom_objects(), blank_uid_ct())
    assert code == 1  # some files are not storable

    blank = _blank_ct()
    for path in blank:
        assert "StudyInstanceUID is missing or empty" in rejected.get(path, ""), path

    by_uid: dict[str, list[CorpusFile]] = defaultdict(list)
    for info in corpus.values():
        if info.valid:
            by_uid[info.sop_instance_uid].append(info)
    with archive_view(backend.settings) as view:
        rows = view.assert_consistent()
        stored = {uid: view.store.get(row.object_key) for uid, row in rows.items()}
    missing = {
        info.path.name: rejected.get(info.path, "not reported")
        for uid in set(by_uid) - set(rows)
        for info in by_uid[uid]
    }
    assert not missing, f"valid objects not stored: {missing}"
    assert set(rows) == set(by_uid), "index rows of objects that are not valid"

    problems = []
    for uid, infos in by_uid.items():
        data = {info.path: info.path.read_bytes() for info in infos}
        winners = [path for path, content in data.items() if content == stored[uid]]
        if not winners:
            problems.append(f"{uid}: stored object equals none of {[p.name for p in data]}")
        for info in infos:
            content = data[info.path]
            # the same data set in another file meta or another encoding (byte order)
            same = content == stored[uid] or same_data_set(stored[uid], content)
            if same and info.path in rejected:
                problems.append(f"{info.path.name}: stored, yet reported rejected")
            if not same and "different object with this SOP" not in rejected.get(info.path, ""):
                problems.append(f"{info.path.name}: a losing duplicate not reported as conflict")
    for path, info in corpus.items():
        if info.valid:
            continue
        head = path.read_bytes()[:512]
        not_dicom = head[128:132] != DICM_PREFIX and not is_dicom_dataset(path)
        if not is_dicomdir(path, head) and not not_dicom and path not in rejected:
            problems.append(f"{path.name}: not storable, yet not reported rejected")
        if not_dicom and path in rejected:
            problems.append(f"{path.name}: not DICOM, yet reported rejected (not skipped)")
    assert not problems, "\n".join(problems)


def _filled_in(files: list[Path], folder: Path) -> Iterator[Path]:
    """The blank-UID CT with its UIDs and patient filled in; pixel data untouched (JPEG 2000)."""
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = "TS-EXAMPLE", "Example^Totalsegmentator"
        out = folder / path.name
        ds.save_as(out, enforce_file_format=True)
        yield out


def test_blank_uid_ct_is_refused_then_stored_with_uids(
    archive: RunningArchive, tmp_path: Path
) -> None:
    blank = _blank_ct()
    contexts = [(CT_IMAGE_STORAGE, JPEG2000_LOSSLESS)]
    statuses = pynetdicom_store(archive.dicom_port, blank, contexts)
    for status, comment in statuses:
        assert status == FAILURE_CANNOT_UNDERSTAND
        assert comment == "StudyInstanceUID is missing or empty"
    code, rejected = _pacs_import(archive.backend, blank_uid_ct())
    assert code == 1 and set(rejected) == set(blank)
    with archive_view(archive.backend.settings) as view:
        assert view.instances() == {}
        assert view.object_keys() == set()

    # UIDs filled in: over DIMSE the data set is stored exactly as sent
    sent = list(_filled_in(blank, tmp_path / "dimse"))
    statuses = pynetdicom_store(archive.dicom_port, sent, contexts)
    assert statuses == [(SUCCESS, "")] * len(sent)
    # via pacs import a second copy with other UIDs: the whole file is stored exactly
    imported = list(_filled_in(blank, tmp_path / "import"))
    assert _pacs_import(archive.backend, tmp_path / "import") == (0, {})
    # importing what already came over DIMSE is an idempotent success
    assert _pacs_import(archive.backend, tmp_path / "dimse") == (0, {})

    with archive_view(archive.backend.settings) as view:
        rows = view.assert_consistent()
        assert len(rows) == 40
        for path in sent:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            stored = view.store.get(rows[uid].object_key)
            assert dataset_part(stored) == dataset_part(path.read_bytes())
            assert rows[uid].transfer_syntax_uid == JPEG2000_LOSSLESS
        for path in imported:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert view.store.get(rows[uid].object_key) == path.read_bytes()
        studies = view.studies()
        assert len(studies) == 2
        assert all(s.number_of_study_related_instances == 20 for s in studies.values())
        assert all(s.modalities_in_study == "CT" for s in studies.values())
