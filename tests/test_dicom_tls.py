"""DICOM TLS (PS3.15 Annex B): DCMTK ``echoscu +tls`` / ``storescu +tls`` against the TLS
port of a running archive, mutual TLS (a client without a certificate of the configured CA is
refused), the calling AE bound to its certificate, and TLS 1.2 as the floor."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from pacs.config import Settings
from pacs.dimse.scu import Outcome, SendError, StoreItem, send
from pacs.dimse.tls import ae_matches_certificate, client_context, server_context
from testkit.tls import CertificateAuthority, Credential
from tests.conftest import (
    RunningArchive,
    free_port,
    make_backend,
    require_tool,
    start_archive,
    stop_archive,
)
from tests.dimse_tools import archive_view
from tests.storescp import running_storescp
from tests.test_retrieve_scp import movescu, received, register, store_study


class Pki:
    """The archive's CA with a server certificate and modality client certificates, and a
    foreign CA whose certificate the archive must refuse."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(folder / "ca", "Regional CA")
        self.server = self.ca.issue("pacs.example", server=True)
        self.ct1 = self.ca.issue("CT1")
        self.mapped = self.ca.issue("modality-7", dns=("modality-7.example",))
        self.foreign = CertificateAuthority(folder / "foreign", "Foreign CA").issue("CT1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_archive(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki
) -> Iterator[tuple[RunningArchive, int]]:
    """An archive (SQLite + files) with its DICOM TLS port: mutual TLS, AE bound to the
    certificate (CN, DNS SAN, or the MAPPED -> modality-7.example pair)."""
    require_tool("echoscu")
    require_tool("storescu")
    backend = make_backend(request, tmp_path, "sqlite", "file")
    tls_port = free_port()
    archive = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_DICOM_TLS_PORT=str(tls_port),
        PACS_DICOM_TLS_CERTIFICATE=str(pki.server.certificate),
        PACS_DICOM_TLS_KEY=str(pki.server.key),
        PACS_DICOM_TLS_CLIENT_CA=str(pki.ca.path),
        PACS_DICOM_TLS_MATCH_AE="true",
        PACS_DICOM_TLS_AE_CERTIFICATES="MAPPED=modality-7.example",
        PACS_DICOM_TLS_PEERS="STORESCP",
    )
    try:
        yield archive, tls_port
    finally:
        stop_archive(archive)


def _dcmtk(
    tool: str, port: int, aet: str, tls: list[str], *files: str
) -> subprocess.CompletedProcess[str]:
    args = [tool, "-aet", aet, "-aec", "PACS", *tls, "127.0.0.1", str(port), *files]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def _client(pki: Pki, credential: Credential) -> list[str]:
    """DCMTK options: TLS with ``credential``, the server verified against the CA."""
    return ["+tls", str(credential.key), str(credential.certificate), "+cf", str(pki.ca.path)]


def test_echoscu_and_storescu_over_tls(tls_archive: tuple[RunningArchive, int], pki: Pki) -> None:
    archive, port = tls_archive
    echo = _dcmtk("echoscu", port, "CT1", _client(pki, pki.ct1))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    ct = str(get_testdata_file("CT_small.dcm"))
    store = _dcmtk("storescu", port, "CT1", _client(pki, pki.ct1), ct)
    assert store.returncode == 0, store.stdout + store.stderr
    with archive_view(archive.backend.settings) as view:
        assert len(view.assert_consistent()) == 1
    plain = _dcmtk("echoscu", archive.dicom_port, "CT1", [])
    assert plain.returncode == 0, "the plain DICOM port keeps working next to TLS"


def test_a_server_certificate_from_another_ca_is_refused_by_the_client(
    tls_archive: tuple[RunningArchive, int], pki: Pki, tmp_path: Path
) -> None:
    _, port = tls_archive
    other = CertificateAuthority(tmp_path / "other", "Other CA")
    options = ["+tls", str(pki.ct1.key), str(pki.ct1.certificate), "+cf", str(other.path)]
    assert _dcmtk("echoscu", port, "CT1", options).returncode != 0


def test_mutual_tls_refuses_a_foreign_or_missing_client_certificate(
    tls_archive: tuple[RunningArchive, int], pki: Pki
) -> None:
    archive, port = tls_archive
    foreign = _dcmtk("echoscu", port, "CT1", _client(pki, pki.foreign))
    assert foreign.returncode != 0, foreign.stdout + foreign.stderr
    anonymous = _dcmtk("echoscu", port, "CT1", ["+tla", "+cf", str(pki.ca.path)])
    assert anonymous.returncode != 0, anonymous.stdout + anonymous.stderr
    assert "TLS handshake" in archive.log()
    assert _dcmtk("echoscu", port, "CT1", _client(pki, pki.ct1)).returncode == 0


def test_calling_ae_must_be_its_certificates(
    tls_archive: tuple[RunningArchive, int], pki: Pki
) -> None:
    archive, port = tls_archive
    impostor = _dcmtk("echoscu", port, "MR9", _client(pki, pki.ct1))
    assert impostor.returncode != 0
    assert "Association Rejected" in impostor.stdout + impostor.stderr
    assert "not the AE of its TLS certificate" in archive.log()
    mapped = _dcmtk("echoscu", port, "MAPPED", _client(pki, pki.mapped))
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    assert _dcmtk("echoscu", port, "CT1", _client(pki, pki.mapped)).returncode != 0


def test_tls_below_1_2_is_refused(pki: Pki) -> None:
    settings = Settings(dicom_tls_certificate=pki.server.certificate, dicom_tls_key=pki.server.key)
    assert server_context(settings).minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(settings).verify_mode == ssl.CERT_NONE
    mutual = Settings(
        dicom_tls_certificate=pki.server.certificate,
        dicom_tls_key=pki.server.key,
        dicom_tls_client_ca=pki.ca.path,
    )
    assert server_context(mutual).verify_mode == ssl.CERT_REQUIRED
    assert client_context(mutual).minimum_version == ssl.TLSVersion.TLSv1_2


def test_ae_certificate_match_rules() -> None:
    cert = {
        "subject": ((("commonName", "CT1"),),),
        "subjectAltName": (("DNS", "ct1.example"), ("IP Address", "10.0.0.1")),
    }
    assert ae_matches_certificate("CT1 ", cert, {})
    assert ae_matches_certificate("ALIAS", cert, {"ALIAS": "ct1.example"})
    assert not ae_matches_certificate("MR2", cert, {})
    assert not ae_matches_certificate("X", cert, {"X": "10.0.0.1"})  # DNS names only
    assert not ae_matches_certificate("CT1", {}, {})
    assert not ae_matches_certificate("CT1", None, {})


@dataclass(frozen=True)
class _Peer:
    title: str
    host: str
    port: int


def _ct_item() -> StoreItem:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    ds = dcmread(path)
    return StoreItem(
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        path.read_bytes,
    )


def test_sends_to_a_tls_peer_over_tls(pki: Pki, tmp_path: Path) -> None:
    """C-STORE (the path of ``pacs send`` and C-MOVE) to DCMTK storescp +tls requiring the
    archive's client certificate; a peer not configured for TLS, or one whose certificate
    another CA issued, gets no objects."""
    binary = require_tool("storescp")
    port = free_port()
    server_side = ["+tls", str(pki.server.key), str(pki.server.certificate)]
    options = [*server_side, "+cf", str(pki.ca.path)]
    settings = Settings(
        data_dir=tmp_path / "var",
        dicom_tls_certificate=pki.server.certificate,
        dicom_tls_key=pki.server.key,
        dicom_tls_client_ca=pki.ca.path,
        dicom_tls_peers="STORESCP",
    )
    with running_storescp(binary, tmp_path / "peer", port, options) as received:
        summary = send(settings, _Peer("STORESCP", "127.0.0.1", port), [_ct_item()])
        assert summary.count(Outcome.SENT) == 1
        assert len(list(received.iterdir())) == 1
        plain = settings.model_copy(update={"dicom_tls_peers": ()})
        with pytest.raises(SendError):
            send(plain, _Peer("STORESCP", "127.0.0.1", port), [_ct_item()])
        other = CertificateAuthority(tmp_path / "other", "Other CA")
        untrusted = settings.model_copy(update={"dicom_tls_client_ca": other.path})
        with pytest.raises(SendError):
            send(untrusted, _Peer("STORESCP", "127.0.0.1", port), [_ct_item()])
        assert len(list(received.iterdir())) == 1


def test_c_move_to_a_tls_peer_goes_over_tls(
    tls_archive: tuple[RunningArchive, int], pki: Pki, tmp_path: Path
) -> None:
    archive, _ = tls_archive
    study = store_study(archive, tmp_path / "in")
    port = free_port()
    options = ["+tls", str(pki.server.key), str(pki.server.certificate), "+cf", str(pki.ca.path)]
    with running_storescp(require_tool("storescp"), tmp_path / "peer", port, options) as out:
        register(archive, "STORESCP", port)
        run = movescu(
            archive, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}"
        )
        assert run.returncode == 0, run.stdout + run.stderr + archive.log()
        assert set(received(out)) == set(study.stored)
