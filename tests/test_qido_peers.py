"""QIDO-RS against real peers on a running archive: dicomweb-client for every endpoint, and the
same queries over C-FIND (DCMTK findscu and pynetdicom) return the same studies."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.conftest import RunningArchive, require_tool
from tests.query_corpus import build_corpus, part10

QUERIES: list[dict[str, str]] = [
    {"PatientID": "US-1"},  # exact
    {"PatientName": "smith*"},  # prefix wildcard, case-insensitive
    {"PatientName": "иванов*"},  # Cyrillic, stored as UTF-8
    {"PatientName": "петрова^анна"},  # Cyrillic, stored as ISO_IR 144
    {"StudyDate": "20240101-", "ModalitiesInStudy": "CT"},  # range + modality
    {"StudyDate": "-20240301"},
    {"AccessionNumber": "A%_1"},  # SQL metacharacters, literal
    {"AccessionNumber": "?-1"},
]


def c_find_studies(port: int, keys: dict[str, str]) -> list[str]:
    """Study UIDs a pynetdicom Study Root C-FIND returns, in response order."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    ae = AE(ae_title="QIDOCMP")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    found: list[str] = []
    try:
        for status, match in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            if status and status.Status in (0xFF00, 0xFF01):
                assert match is not None
                found.append(match.StudyInstanceUID)
            else:
                assert status and status.Status == 0x0000
    finally:
        assoc.release()
    return found


def findscu_studies(archive: RunningArchive, out: Path, *keys: str) -> list[str]:
    """Study UIDs DCMTK findscu (study root) extracts."""
    out.mkdir()
    args = ["findscu", "-S", "-aet", "FINDSCU", "-aec", "PACS", "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys):
        args += ["-k", key]
    args += ["127.0.0.1", str(archive.dicom_port)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return [pydicom.dcmread(path).StudyInstanceUID for path in sorted(out.glob("rsp*.dcm"))]


def test_dicomweb_client_and_c_find_agree(archive: RunningArchive, tmp_path: Path) -> None:
    require_tool("findscu")
    corpus = build_corpus()
    web = DICOMwebClient(url=f"{archive.http}/dicomweb")
    # as read from files, the way dicomweb-client users hold them
    web.store_instances([pydicom.dcmread(io.BytesIO(part10(ds))) for ds in corpus.objects])

    # every endpoint through dicomweb-client
    studies = web.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == corpus.studies
    series = web.search_for_series(corpus.smith)
    assert [s["0020000E"]["Value"][0] for s in series] == [corpus.smith_ct, corpus.smith_mr]
    assert len(web.search_for_series(search_filters={"Modality": "MR"})) == 2
    instances = web.search_for_instances(corpus.smith, corpus.smith_ct)
    assert [i["00080018"]["Value"][0] for i in instances] == [
        ds.SOPInstanceUID for ds in corpus.objects[:2]
    ]
    assert len(web.search_for_instances(corpus.smith)) == 3
    assert len(web.search_for_instances(search_filters={"PatientID": "US-1"})) == 4
    fuzzy = web.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "анн"})
    assert [s["0020000D"]["Value"][0] for s in fuzzy] == [corpus.petrova]
    paged = web.search_for_studies(limit=1, offset=0, get_remaining=True)
    assert [s["0020000D"]["Value"][0] for s in paged] == corpus.studies
    (with_fields,) = web.search_for_studies(
        fields=["SOPClassesInStudy", "00100021"], search_filters={"AccessionNumber": "A-1"}
    )
    assert len(with_fields["00080062"]["Value"]) == 2 and "00100021" in with_fields
    for item in studies:
        assert Dataset.from_json(item).to_json_dict() == item

    # the same queries over QIDO-RS and C-FIND return the same studies, in the same order
    for keys in QUERIES:
        qido = [s["0020000D"]["Value"][0] for s in web.search_for_studies(search_filters=keys)]
        assert qido, keys
        assert c_find_studies(archive.dicom_port, keys) == qido, keys
    for number, key in enumerate(
        ("PatientName=SMITH*", "StudyDate=20250101-20261231", "ModalitiesInStudy=MR")
    ):
        keyword, value = key.split("=")
        qido = [
            s["0020000D"]["Value"][0]
            for s in web.search_for_studies(search_filters={keyword: value})
        ]
        assert findscu_studies(archive, tmp_path / f"f{number}", key) == qido
