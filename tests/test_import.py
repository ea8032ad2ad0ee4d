"""``pacs import`` as users run it: a subprocess on folders, its summary and exit code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom.data
from pydicom import dcmread
from sqlalchemy import func, select

from pacs.index.engine import create_index_engine, session_factory
from pacs.index.models import Instance, Study
from pacs.storage import open_store
from testkit.dicom_factory import write_ct_series
from tests.conftest import ROOT, Backend
from tests.dimse_tools import dataset_part

DICOMDIR_TESTS = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
PATIENT = {"patient_id": "IMPORT-SECRET-ID", "patient_name": "Secretname^Patient"}
_ROW = re.compile(
    r"^\W*(stored|duplicate|rejected|skipped \(DICOMDIR\)|skipped \(not DICOM\))\W+(\d+)\W*$"
)
ROWS = {"stored", "duplicate", "rejected", "skipped (DICOMDIR)", "skipped (not DICOM)"}


def pacs_import(backend: Backend, *paths: Path) -> tuple[int, str, dict[str, int]]:
    """Run ``python -m pacs.cli import``; return exit code, output and the summary counts."""
    env = {**os.environ, **backend.env, "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", *map(str, paths)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    summary = {m[1]: int(m[2]) for line in output.splitlines() if (m := _ROW.match(line))}
    assert set(summary) == ROWS, output
    return done.returncode, output, summary


def count_instances(backend: Backend) -> tuple[int, int]:
    """(instances, studies) in the index."""
    engine = create_index_engine(backend.settings)
    try:
        with session_factory(engine)() as session:
            instances = session.scalar(select(func.count(Instance.pk))) or 0
            studies = session.scalar(select(func.count(Study.pk))) or 0
            return instances, studies
    finally:
        engine.dispose()


def dicomdirtests_files() -> tuple[list[Path], list[Path], list[Path]]:
    """(images, DICOMDIRs, other files) of pydicom's dicomdirtests folder."""
    files = sorted(p for p in DICOMDIR_TESTS.rglob("*") if p.is_file())
    dicomdirs = [p for p in files if p.name.startswith("DICOMDIR")]
    other = [p for p in files if p.name.startswith("README")]
    images = [p for p in files if p not in dicomdirs and p not in other]
    return images, dicomdirs, other


def test_import_of_a_mixed_tree(backend: Backend, tmp_path: Path) -> None:
    images, dicomdirs, readmes = dicomdirtests_files()
    assert len(images) > 50 and DICOMDIR_TESTS / "DICOMDIR" in dicomdirs and readmes
    tree = tmp_path / "tree"
    series = write_ct_series(tree / "ct", slices=3, size=16, **PATIENT)
    (tree / "copy").mkdir()
    shutil.copy(series[0], tree / "copy" / "same-object.dcm")  # a duplicate
    (tree / "junk.bin").write_bytes(b"\x00garbage, not DICOM\n" * 50)
    (tree / "empty.dcm").write_bytes(b"")
    (tree / "manifest.json").write_text('{"files": ["ct/1.dcm"]}')
    part10 = series[1].read_bytes()
    (tree / "truncated.dcm").write_bytes(part10[:400])  # DICOM, cut short: refused
    (tree / "bare-dataset").write_bytes(dataset_part(part10))  # no File Meta: refused
    # Part-10 without its preamble, or without preamble and DICM prefix: stored (acceptance
    # rule), here as duplicates of series[1] (the same data set)
    (tree / "no-preamble.dcm").write_bytes(part10[128:])
    (tree / "meta-first.dcm").write_bytes(part10[132:])

    code, output, summary = pacs_import(backend, DICOMDIR_TESTS, tree)

    assert code == 1, output  # DICOM objects were rejected
    assert summary == {
        "stored": len(images) + 3,
        "duplicate": 3,
        "rejected": 2,
        "skipped (DICOMDIR)": len(dicomdirs),
        "skipped (not DICOM)": len(readmes) + 3,
    }, output
    for bad in (tree / "truncated.dcm", tree / "bare-dataset"):
        [line] = [line for line in output.splitlines() if f"{bad}:" in line]
        assert line.startswith("rejected") and "invalid" in line, line  # path and reason
    for skipped in (tree / "junk.bin", tree / "empty.dcm", tree / "manifest.json", *readmes):
        assert f"{skipped}:" not in output
    assert not [line for line in output.splitlines() if "DICOMDIR:" in line]
    for secret in PATIENT.values():  # no patient identifiers in the output
        assert secret not in output
    studies = {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in images}
    assert count_instances(backend) == (len(images) + 3, len(studies) + 1)

    engine = create_index_engine(backend.settings)
    with session_factory(engine)() as session:
        key = session.scalar(select(Instance.object_key).where(Instance.size_bytes > 0).limit(1))
        sizes = dict(session.execute(select(Instance.sop_instance_uid, Instance.size_bytes)).all())
    engine.dispose()
    assert key is not None
    assert sorted(sizes.values()) == sorted(
        p.stat().st_size for p in [*images, *series]
    )  # every file stored whole
    store = open_store(backend.settings)
    assert store.get(key)[128:132] == b"DICM"


def test_clean_import_then_reimport(backend: Backend, tmp_path: Path) -> None:
    folder = tmp_path / "clean"
    files = write_ct_series(folder / "a", slices=4, size=16)
    files += write_ct_series(folder / "b" / "c", slices=2, size=16)

    code, output, summary = pacs_import(backend, folder)
    assert code == 0, output
    assert summary == dict.fromkeys(ROWS, 0) | {"stored": 6}
    assert count_instances(backend) == (6, 2)

    code, output, summary = pacs_import(backend, folder, files[0])  # again, and a file twice
    assert code == 0, output
    assert summary == dict.fromkeys(ROWS, 0) | {"duplicate": 7}
    assert count_instances(backend) == (6, 2)


def test_folder_with_non_dicom_files_imports_cleanly(backend: Backend, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    write_ct_series(folder / "series", slices=2, size=16)
    (folder / "manifest.json").write_text('{"study": "export", "files": 2}')
    (folder / "README").write_text("Exported from the modality.\n")
    (folder / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    code, output, summary = pacs_import(backend, folder)

    assert code == 0, output
    assert summary == dict.fromkeys(ROWS, 0) | {"stored": 2, "skipped (not DICOM)": 3}
    assert count_instances(backend) == (2, 1)


def test_import_with_a_missing_path_imports_nothing(backend: Backend, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "good", slices=2, size=16)
    missing = tmp_path / "no-such-folder"
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "import", str(tmp_path / "good"), str(missing)],
        env={**os.environ, **backend.env, "COLUMNS": "400"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"no such file or directory: {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    assert count_instances(backend) == (0, 0)
