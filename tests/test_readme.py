"""Every shell example of README.md runs, as written, against the demo data the README creates.

The convention for README.md authors:

- Every fenced block tagged ``sh`` runs, in README order, in one archive started for the test.
  Untagged blocks are not shell examples and do not run: the opening ``make run`` / ``make test``
  (they are how a reader gets an archive; ``tests/test_deployment.py`` pins them) and printed
  output such as the banner.
- A block that cannot run here says so on the line right before its fence::

      <!-- readme-test: not run (REASON) -->

  e.g. ``make run`` itself, Docker, a remote archive that holds the study, an AI result.
- The demo block prints ``export S=<study> SE=<series> I=<instance>``; later blocks use ``$S``,
  ``$SE`` and ``$I`` (never placeholders such as ``<StudyInstanceUID>``).
- A block that exports ``TOKEN`` (``export TOKEN=$(.venv/bin/pacs token --user admin)``) hands
  it to the later blocks, as a reader's shell would: they send it as a bearer token.

How a block runs: ``bash -e`` (so every command must succeed, not only the last), in a fresh
process group that is killed afterwards (``storescp ... &``), in a scratch folder, with
``curl`` failing on HTTP errors (``--fail``: a 404 fails the block), ``S``/``SE``/``I`` as the
demo printed them, and these substitutions: ``.venv/bin/`` -> this interpreter's bin folder,
``127.0.0.1:8000`` / ``localhost:8000`` -> the archive's HTTP address, ``11112`` -> its DICOM
port, ``11113`` -> a free port for the peer, ``/tmp/demo-ct`` -> a scratch folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacs.config import Settings
from tests.conftest import (
    ROOT,
    Backend,
    RunningArchive,
    free_port,
    require_tool,
    start_archive,
    stop_archive,
)

pytestmark = pytest.mark.dcmtk

README = ROOT / "README.md"
NOT_RUN = re.compile(r"^<!-- readme-test: not run \((?P<reason>[^)]+)\) -->$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w*)\s*$")
_EXPORTED_UIDS = re.compile(r"^export S=(?P<S>[\d.]+) SE=(?P<SE>[\d.]+) I=(?P<I>[\d.]+)$", re.M)
_PRELUDE = 'curl() { command curl --fail "$@"; }\n'
_TRAILER = '\n[ -z "${TOKEN:-}" ] || printf "\\nexport TOKEN=%s\\n" "$TOKEN"\n'
_EXPORTED_TOKEN = re.compile(r"^export TOKEN=(?P<TOKEN>\S+)$", re.M)
BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, when marked


def readme_blocks(markdown: str) -> list[Block]:
    """The fenced blocks of ``markdown`` with their language and not-run marker."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, indent = i, fence["indent"]
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        previous = next((p.strip() for p in reversed(lines[:start]) if p.strip()), "")
        marker = NOT_RUN.match(previous)
        body = textwrap.dedent(
            "\n".join(line.removeprefix(indent) for line in lines[start + 1 : i])
        )
        blocks.append(Block(start + 1, fence["lang"], body, marker["reason"] if marker else None))
        i += 1
    return blocks


def test_block_parser_reads_markers_and_indented_blocks() -> None:
    markdown = (
        "text\n<!-- readme-test: not run (needs Docker) -->\n```sh\ndocker compose up\n```\n"
        "- item:\n\n  ```sh\n  echo $S\n  ```\n```\nbanner\n```\n"
    )
    blocks = readme_blocks(markdown)
    assert blocks == [
        Block(3, "sh", "docker compose up", "needs Docker"),
        Block(8, "sh", "echo $S", None),
        Block(11, "", "banner", None),
    ]


def test_readme_marks_each_skipped_block_with_a_reason() -> None:
    shell = [b for b in readme_blocks(README.read_text()) if b.lang == "sh"]
    runnable = [b for b in shell if b.not_run is None]
    assert len(runnable) >= 12, "the README lost its examples, or the parser its blocks"
    assert len(shell) - len(runnable) <= 7, [b.line for b in shell if b.not_run]
    for block in runnable:  # placeholders were what made the examples fail
        assert not re.search(r"<[A-Za-z][^>]*>|path/to/", block.text), (block.line, block.text)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningArchive]:
    env = {"PACS_DATA_DIR": str(tmp_path / "var"), "PACS_LOG_LEVEL": "WARNING"}
    backend = Backend("sqlite", "file", Settings(data_dir=tmp_path / "var"), env)
    running = start_archive(backend, tmp_path / "serve.log")
    yield running
    stop_archive(running)


def substitute(text: str, archive: RunningArchive, peer_port: int, demo: Path) -> str:
    """The block as it runs against the test's archive (see the module docstring)."""
    http = f"127.0.0.1:{archive.http_port}"
    for old, new in (
        (".venv/bin/", f"{Path(sys.executable).parent}/"),
        ("127.0.0.1:8000", http),
        ("localhost:8000", http),
        ("11112", str(archive.dicom_port)),
        ("11113", str(peer_port)),
        ("/tmp/demo-ct", str(demo)),
    ):
        text = text.replace(old, new)
    return text


def run_block(script: str, cwd: Path, env: dict[str, str]) -> tuple[int | None, str]:
    """Run ``script`` with ``bash -e`` in a process group of its own, killed once bash exits
    (background servers of the block); its exit status (None: timed out) and output."""
    log = cwd / "block.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-c", _PRELUDE + script + _TRAILER],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        returncode: int | None = process.wait(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return returncode, log.read_text(errors="replace")


def test_every_shell_block_of_the_readme_runs(archive: RunningArchive, tmp_path: Path) -> None:
    for tool in ("echoscu", "storescu", "storescp", "findscu", "movescu", "getscu"):
        require_tool(tool)
    work, demo = tmp_path / "work", tmp_path / "demo-ct"
    work.mkdir()
    peer_port = free_port()
    env = {
        **archive.env,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    ran = 0
    for block in readme_blocks(README.read_text()):
        if block.lang != "sh" or block.not_run is not None:
            continue
        returncode, output = run_block(substitute(block.text, archive, peer_port, demo), work, env)
        assert returncode == 0, (
            f"README.md block at line {block.line} exited {returncode}:\n"
            f"{block.text}\n---\n{output}\n--- server log:\n{archive.log()[-3000:]}"
        )
        if exported := _EXPORTED_UIDS.search(output):
            env |= exported.groupdict()
        if token := _EXPORTED_TOKEN.search(output):
            env |= token.groupdict()
        ran += 1
    assert {"S", "SE", "I"} <= set(env), "no README block printed the demo UIDs"
    assert "TOKEN" in env, "no README block made a bearer token (pacs token)"
    assert ran >= 12
