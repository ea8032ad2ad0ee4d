"""Import rules of the repository that no linter here checks: benchmarks and the test kit
never import ``tests``, production packages never import ``tests`` or ``testkit``, and no
module edits ``sys.path`` (scripts run as ``python -m``); and the layering contracts that
``lint-imports`` checks hold."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("pacs", "inference", "viewer_api")


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_bench_and_testkit_do_not_import_tests() -> None:
    offenders = [p for p in _modules("bench", "testkit") if "tests" in _imported(p)]
    assert not offenders, [str(p.relative_to(ROOT)) for p in offenders]


def test_production_imports_no_test_code() -> None:
    offenders = [p for p in _modules(*PRODUCTION) if _imported(p) & {"tests", "testkit"}]
    assert not offenders, [str(p.relative_to(ROOT)) for p in offenders]


def test_no_sys_path_edits() -> None:
    folders = (*PRODUCTION, "bench", "testkit", "tests", "models")
    offenders = [p for p in _modules(*folders) if "sys.path." in p.read_text()]
    offenders = [p for p in offenders if p != Path(__file__).resolve()]
    assert not offenders, [str(p.relative_to(ROOT)) for p in offenders]


def test_cli_imports_no_metrics_before_the_multiprocess_dir_is_set() -> None:
    """prometheus_client picks its value class when first imported: ``pacs serve`` sets
    PROMETHEUS_MULTIPROC_DIR after parsing its options, so importing ``pacs.cli`` must not
    import the metrics yet (else ``/metrics`` answers empty)."""
    code = "import sys, pacs.cli; print('prometheus_client.values' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", "pacs.cli imports prometheus_client at import time"


def test_import_contracts_hold() -> None:
    """The layers of docs/architecture.md, as ``[tool.importlinter]`` in pyproject.toml."""
    command = Path(sys.executable).with_name("lint-imports")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [str(command), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
