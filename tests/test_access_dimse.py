"""The access policy over DIMSE, with DCMTK peers against ``pacs serve``: an AE of organisation
A finds and gets none of organisation B's studies (C-FIND, C-GET), C-MOVE goes only to a
registered AE of the caller's organisation, an AE without organisation reaches nothing once
the allow-list names organisations, and a patient's consent hides their studies from C-FIND
and C-GET from the next request on."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from pacs.cli import app as cli
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from testkit.dicom_factory import write_ct_series
from tests.conftest import (
    Backend,
    RunningArchive,
    free_port,
    require_tool,
    start_archive,
    stop_archive,
)
from tests.dimse_tools import storescu
from tests.storescp import running_storescp

ALLOWED = "AEA@127.0.0.1=OrgA,AEB@127.0.0.1=OrgB,NOORG@127.0.0.1"


@dataclass
class Scene:
    archive: RunningArchive
    studies: dict[str, str]  # organisation -> StudyInstanceUID (patients P-A, P-B)


@pytest.fixture
def scene(db_backend: Backend, tmp_path: Path) -> Iterator[Scene]:
    require_tool("storescu")
    archive = start_archive(
        db_backend, tmp_path / "serve.log", PACS_ACCEPT_ANY_AE="false", PACS_ALLOWED_AES=ALLOWED
    )
    try:
        studies = {}
        for org, aet, pid in (("OrgA", "AEA", "P-A"), ("OrgB", "AEB", "P-B")):
            paths = write_ct_series(tmp_path / org, slices=2, size=16, patient_id=pid)
            assert len(storescu(archive.dicom_port, paths, aet=aet).succeeded) == 2
            studies[org] = str(dcmread(paths[0]).StudyInstanceUID)
        yield Scene(archive, studies)
    finally:
        stop_archive(archive)


def findscu(archive: RunningArchive, aet: str) -> set[str]:
    """The StudyInstanceUIDs a study-level C-FIND by ``aet`` answers."""
    args = [require_tool("findscu"), "-v", "-S", "-aet", aet, "-aec", "PACS"]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    args += ["127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    # an odd-length UID arrives padded with NUL, which findscu prints inside the brackets
    pattern = r"\(0020,000d\) UI \[([0-9.]+)\x00?\]"
    found = set(re.findall(pattern, run.stdout + run.stderr))
    return found


def getscu(archive: RunningArchive, aet: str, study: str, out: Path) -> int:
    """The number of instances a study-level C-GET by ``aet`` receives."""
    out.mkdir(parents=True)
    args = [require_tool("getscu"), "-S", "-aet", aet, "-aec", "PACS", "-od", str(out)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    args += ["127.0.0.1", str(archive.dicom_port)]
    subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    return len([p for p in out.iterdir() if p.is_file()])


def movescu(archive: RunningArchive, aet: str, destination: str, study: str) -> str:
    args = [require_tool("movescu"), "-v", "-S", "-aet", aet, "-aec", "PACS"]
    args += ["-aem", destination, "-k", "QueryRetrieveLevel=STUDY"]
    args += ["-k", f"StudyInstanceUID={study}", "127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    return run.stdout + run.stderr


def register(archive: RunningArchive, title: str, port: int, organisation: str) -> None:
    command = ["ae", "add", title, "127.0.0.1", str(port), "--organisation", organisation]
    result = CliRunner().invoke(cli, command, env=archive.backend.env)
    assert result.exit_code == 0, result.output


def test_an_ae_finds_and_gets_its_organisations_studies_only(scene: Scene, tmp_path: Path) -> None:
    a, b = scene.studies["OrgA"], scene.studies["OrgB"]
    assert findscu(scene.archive, "AEA") == {a}, scene.archive.log()
    assert findscu(scene.archive, "AEB") == {b}
    assert findscu(scene.archive, "NOORG") == set()
    assert getscu(scene.archive, "AEA", a, tmp_path / "get-a") == 2
    assert getscu(scene.archive, "AEA", b, tmp_path / "get-b") == 0


def test_c_move_goes_only_to_the_callers_organisation(scene: Scene, tmp_path: Path) -> None:
    a = scene.studies["OrgA"]
    port = free_port()
    with running_storescp(require_tool("storescp"), tmp_path / "dest", port) as received:
        register(scene.archive, "DEST_A", port, "OrgA")
        register(scene.archive, "DEST_B", port, "OrgB")
        refused = movescu(scene.archive, "AEA", "DEST_B", a)
        assert "Refused: MoveDestinationUnknown" in refused, refused
        unknown = movescu(scene.archive, "AEA", "NOWHERE", a)
        assert "Refused: MoveDestinationUnknown" in unknown, unknown
        assert not any(received.iterdir())
        moved = movescu(scene.archive, "AEA", "DEST_A", a)
        assert "Final Move Response (Success)" in moved, moved + scene.archive.log()
        assert len([p for p in received.iterdir() if p.is_file()]) == 2
        other = movescu(scene.archive, "AEA", "DEST_A", scene.studies["OrgB"])
        assert len([p for p in received.iterdir() if p.is_file()]) == 2, other


def test_consent_hides_a_patient_from_c_find_and_c_get(scene: Scene, tmp_path: Path) -> None:
    a = scene.studies["OrgA"]
    engine = create_index_engine(scene.archive.backend.settings)
    try:
        store = FhirStore(engine)
        store.update("Organization", "OrgA", {"resourceType": "Organization", "id": "OrgA"})
        patient = store.create(
            {"resourceType": "Patient", "identifier": [{"system": "urn:pid", "value": "P-A"}]}
        )
        assert findscu(scene.archive, "AEA") == {a}
        store.create(
            {
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"code": "patient-privacy"}]},
                "category": [{"coding": [{"code": "INFA"}]}],
                "patient": {"reference": f"Patient/{patient['id']}"},
                "policyRule": {"coding": [{"code": "OPTOUT"}]},
                "provision": {
                    "type": "deny",
                    "actor": [
                        {
                            "role": {"coding": [{"code": "IRCP"}]},
                            "reference": {"reference": "Organization/OrgA"},
                        }
                    ],
                },
            }
        )
        assert findscu(scene.archive, "AEA") == set()
        assert getscu(scene.archive, "AEA", a, tmp_path / "get") == 0
    finally:
        engine.dispose()
