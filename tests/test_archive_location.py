"""The CLI names the archive it opens and never creates an empty one unless asked (--init)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pacs.archive_location import describe
from pacs.cli import app
from pacs.config import Settings


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory outside any archive, with no PACS_* variables."""
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pacs(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize(
    "args",
    [
        ("ae", "add", "PEER", "127.0.0.1", "104"),
        ("ae", "list"),
        ("ae", "remove", "PEER"),
        ("db", "current"),
        ("db", "upgrade"),
        ("jobs", "list"),
        ("jobs", "show", "1"),
        ("send", "1.2.3", "PEER"),
        ("retrieve", "1.2.3", "--from", "PEER"),
        ("worker",),
    ],
)
def test_commands_refuse_to_create_an_archive(elsewhere: Path, args: tuple[str, ...]) -> None:
    result = pacs(*args)
    assert result.exit_code == 2, result.output
    assert f"data dir {elsewhere / 'var'}" in result.stderr
    assert "no archive at" in result.stderr and "--init" in result.stderr
    assert result.stdout == ""
    assert list(elsewhere.iterdir()) == []  # nothing created


def test_init_creates_the_archive_then_commands_use_it(elsewhere: Path) -> None:
    added = pacs("ae", "add", "PEER", "127.0.0.1", "104", "--init")
    assert added.exit_code == 0, added.output
    assert added.stdout == "added PEER 127.0.0.1:104\n"
    index = elsewhere / "var" / "index.sqlite3"
    assert index.is_file()
    assert f"pacs: data dir {elsewhere / 'var'}, database sqlite:///{index}" in added.stderr
    listed = pacs("ae", "list")
    assert listed.exit_code == 0 and "PEER" in listed.stdout
    assert "pacs: data dir" in listed.stderr and "pacs: data dir" not in listed.stdout


def test_data_dir_flag_points_at_an_existing_archive(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = elsewhere / "archive"
    assert pacs("db", "upgrade", "--data-dir", str(archive), "--init").exit_code == 0
    monkeypatch.chdir(archive)  # another cwd: the flag decides, not the cwd
    current = pacs("db", "current", "--data-dir", str(archive))
    assert current.exit_code == 0 and current.stdout.strip() not in {"", "empty"}
    assert not (archive / "var").exists()


def test_server_database_is_named_without_its_password() -> None:
    settings = Settings(database_url="postgresql+psycopg://pacs:s3cret@db.example:5432/pacs")
    line = describe(settings)
    assert "s3cret" not in line
    assert "postgresql+psycopg://pacs:***@db.example:5432/pacs" in line
