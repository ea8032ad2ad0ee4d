"""Settings: every field from ``PACS_<NAME>``, the embedded defaults, validation, CLI flags."""

from __future__ import annotations

import ipaddress
import os
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pacs.cli import app
from pacs.config import DuplicatePolicy, FsyncPolicy, KnownAE, Settings
from pacs.index.engine import create_index_engine
from pacs.storage import open_store
from pacs.storage.filesystem import FilesystemStore


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PACS_* variables, the working directory in tmp_path."""
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


COMMA_SEPARATED: dict[str, tuple[str, Any]] = {
    "allowed_aes": (
        " CT1@10.1.2.3=City Hospital 1, MR2 ,,",
        (KnownAE("CT1", "10.1.2.3", "City Hospital 1"), KnownAE("MR2", "*", "")),
    ),
    "cors_origins": (
        "https://viewer.example.org, http://localhost:3000",
        ("https://viewer.example.org", "http://localhost:3000"),
    ),
    "webhook_urls": (
        "http://a.example/hook,,http://b.example/ ",
        ("http://a.example/hook", "http://b.example/"),
    ),
    "stable_after_seconds_by_ae": (" SLOWCT=120, MR1=0.5 ", {"SLOWCT": 120.0, "MR1": 0.5}),
    "worker_analysis_limits": ("ct-chest=1, test=4", {"ct-chest": 1, "test": 4}),
    "webhook_allowed_networks": (
        "127.0.0.0/8, 10.1.2.3,fd00::/8",
        (
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("10.1.2.3/32"),
            ipaddress.ip_network("fd00::/8"),
        ),
    ),
    "dicom_tls_ae_certificates": (
        "CT1=ct1.example.org, MR2=mr2",
        {"CT1": "ct1.example.org", "MR2": "mr2"},
    ),
    "dicom_tls_peers": ("REMOTE1, REMOTE2", ("REMOTE1", "REMOTE2")),
    "ian_destinations": ("RIS1, ,WS2", ("RIS1", "WS2")),
    "worklist_station_organisations": (
        "CT01=Clinic A| Clinic B, MR02=Clinic C",
        {"CT01": ("Clinic A", "Clinic B"), "MR02": ("Clinic C",)},
    ),
    "radiologist_reads_for": (
        "RadCentre=ClinicA|ClinicB, Tele=ClinicC",
        {"RadCentre": ("ClinicA", "ClinicB"), "Tele": ("ClinicC",)},
    ),
    "move_routes": ("OrgA=ARCHIVE_B|WS9", {"OrgA": ("ARCHIVE_B", "WS9")}),
}
"""The settings written as comma-separated strings in the environment, parsed once."""


def non_default(name: str, annotation: Any, default: Any) -> tuple[str, Any]:
    """An environment string for a field and the value it must parse to (never the default)."""
    if name in COMMA_SEPARATED:
        return COMMA_SEPARATED[name]
    if name == "ae_title":
        return "ARCHIVE_2", "ARCHIVE_2"
    if name == "oidc_algorithms":  # comma-separated, but never empty (it pins the algorithms)
        return " ES256, PS256 ", ("ES256", "PS256")
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        member = next(m for m in annotation if m != default)
        return str(member.value), member
    if annotation is bool:
        return str(not default).lower(), not default
    if annotation is int:
        return str(default + 7), default + 7
    if annotation is float and 0 < default < 1:  # a share (0..1): stay inside it
        return str(default / 2), default / 2
    if annotation is float:
        return str(default + 0.5), default + 0.5
    if annotation is Path:
        return "/srv/pacs-data", Path("/srv/pacs-data")
    if annotation is str:
        return f"{name}-from-env", f"{name}-from-env"
    raise AssertionError(f"add a value for Settings.{name} ({annotation}) to this test")


def test_every_field_can_be_set_from_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        raw, value = non_default(name, field.annotation, default)
        assert value != default
        monkeypatch.setenv(f"PACS_{name.upper()}", raw)
        expected[name] = value
    settings = Settings()
    assert {name: getattr(settings, name) for name in expected} == expected
    assert len(expected) >= 25  # the test really iterated over the fields


def test_defaults_match_the_design_contract(clean_env: Path) -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.dicom_port == 11112
    assert settings.ae_title == "PACS"
    assert settings.http_port == 8000
    assert settings.data_dir == Path("./var")
    assert settings.auth == "local"  # never open by default
    var = (clean_env / "var").resolve()
    assert settings.resolved_database_url == f"sqlite:///{var / 'index.sqlite3'}"
    assert settings.resolved_storage_url == (var / "objects").as_uri()
    assert settings.storage_fsync is FsyncPolicy.ALWAYS
    assert settings.duplicate_policy is DuplicatePolicy.REJECT
    assert settings.log_phi is False
    assert settings.scp_process_count >= 1

    engine = create_index_engine(settings)
    assert engine.dialect.name == "sqlite"
    assert engine.url.database == str(var / "index.sqlite3")
    engine.dispose()
    store = open_store(settings)
    assert isinstance(store, FilesystemStore)
    assert store.root == var / "objects"


def test_data_dir_moves_the_embedded_database_and_store(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_DATA_DIR", str(clean_env / "elsewhere"))
    settings = Settings()
    assert settings.resolved_database_url.endswith(f"{clean_env}/elsewhere/index.sqlite3")
    assert settings.resolved_storage_url == (clean_env / "elsewhere" / "objects").as_uri()
    explicit = Settings(
        database_url="postgresql+psycopg://db/pacs",
        storage_url="s3://b/p",
        s3_access_key="key",
        s3_secret_key="secret",
    )
    assert explicit.resolved_database_url == "postgresql+psycopg://db/pacs"
    assert explicit.resolved_storage_url == "s3://b/p"


@pytest.mark.parametrize(
    "title", ["", "   ", "A" * 17, "AE\\TITLE", "AE\x01", "AE\tX", "ПАКС", "PACS\x7f"]
)
def test_invalid_ae_title_rejected(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, title: str
) -> None:
    with pytest.raises(ValidationError, match="ae_title"):
        Settings(ae_title=title)
    monkeypatch.setenv("PACS_AE_TITLE", title)
    with pytest.raises(ValidationError, match="ae_title"):
        Settings()


@pytest.mark.parametrize(
    ("title", "expected"), [("A", "A"), ("  PACS ", "PACS"), ("X" * 16, "X" * 16)]
)
def test_valid_ae_title_accepted(clean_env: Path, title: str, expected: str) -> None:
    assert Settings(ae_title=title).ae_title == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dicom_port", "not-a-port"),
        ("storage_fsync", "sometimes"),
        ("duplicate_policy", "x"),
        ("allowed_aes", "CT1@h,SEVENTEEN_CHARS_X@h"),
        ("stable_after_seconds_by_ae", "CT1=60,MR=-1"),
        ("worker_analysis_limits", "ct-chest=0"),
        ("auth", "open"),
        ("oidc_algorithms", "RS256,none"),
        ("oidc_algorithms", "HS256"),
    ],
)
def test_invalid_values_from_the_environment_rejected(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"PACS_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("name", sorted(COMMA_SEPARATED))
def test_comma_separated_settings_parse_once_into_typed_values(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    raw, value = COMMA_SEPARATED[name]
    monkeypatch.setenv(f"PACS_{name.upper()}", " , ")
    assert not getattr(Settings(), name)  # blank entries: an empty list or map
    monkeypatch.setenv(f"PACS_{name.upper()}", raw)
    settings = Settings()
    assert getattr(settings, name) == value
    assert getattr(Settings(**{name: raw}), name) == value  # a CLI flag's string, too
    # what `pacs serve` hands its DICOM server processes reads back the same
    assert getattr(Settings(**settings.model_dump(mode="json")), name) == value


def test_typed_values_are_checked_too(clean_env: Path) -> None:
    with pytest.raises(ValidationError, match="stable_after_seconds_by_ae"):
        Settings(stable_after_seconds_by_ae={"CT1": -1.0})
    with pytest.raises(ValidationError, match="worker_analysis_limits"):
        Settings(worker_analysis_limits={"ct-chest": 0})


def test_invalid_setting_stops_the_cli_with_the_variable_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_STABLE_AFTER_SECONDS_BY_AE", "CT1=soon")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2, result.output
    assert "PACS_STABLE_AFTER_SECONDS_BY_AE" in result.output
    assert "AE_TITLE=seconds" in result.output
    monkeypatch.delenv("PACS_STABLE_AFTER_SECONDS_BY_AE")
    result = CliRunner().invoke(app, ["worker", "--limit", "ct-chest=0"])
    assert result.exit_code == 2, result.output
    assert "PACS_WORKER_ANALYSIS_LIMITS" in result.output and "ANALYSIS=count" in result.output
    assert not (clean_env / "var").exists()  # nothing was created


def test_serve_help_lists_the_flags(clean_env: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for flag in ("--data-dir", "--dicom-port", "--http-port", "--host"):
        assert flag in result.output
    for variable in ("PACS_DATA_DIR", "PACS_DICOM_PORT", "PACS_HTTP_PORT", "PACS_HOST"):
        assert variable in result.output  # the help names the environment variables


def test_serve_flags_override_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # serve sets it: restore
    captured: list[tuple[Settings, bool]] = []
    monkeypatch.setattr("pacs.serve.run_serve", lambda s, http: captured.append((s, http)))
    env = {"PACS_DICOM_PORT": "104", "PACS_HTTP_PORT": "80", "PACS_AE_TITLE": "FROM_ENV"}
    args = ["serve", "--data-dir", str(clean_env / "d"), "--dicom-port", "11113"]
    result = CliRunner().invoke(app, [*args, "--host", "0.0.0.0"], env=env)
    assert result.exit_code == 0, result.output
    [(settings, http)] = captured
    assert http is True
    assert settings.data_dir == clean_env / "d"
    assert settings.dicom_port == 11113  # the flag wins over PACS_DICOM_PORT
    assert settings.host == "0.0.0.0"
    assert settings.http_port == 80  # no flag: the environment applies
    assert settings.ae_title == "FROM_ENV"
    assert (clean_env / "d" / "metrics").is_dir()
