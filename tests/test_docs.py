"""Statements of the docs that code can check."""

from __future__ import annotations

import re
from pathlib import Path

from pacs.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _cli_row() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return next(line for line in text.splitlines() if line.startswith("| `pacs/cli.py` |"))


def test_architecture_cli_row_lists_every_command() -> None:
    row = _cli_row()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        assert f"`{name}`" in row, name
    for group in app.registered_groups:
        listed = re.search(rf"`{group.name} ([a-z/-]+)`", row)
        assert listed, group.name
        names = {c.name or c.callback.__name__ for c in group.typer_instance.registered_commands}  # type: ignore[union-attr]
        assert set(listed.group(1).split("/")) == names, group.name
