"""The test-only analyses (pacs.jobs.testing) are registered only where asked for."""

from __future__ import annotations

import pytest

from pacs.jobs.registry import UnknownAnalysisError, import_path, registered
from pacs.jobs.rules import Rule


def test_production_registry_has_only_real_analyses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACS_TEST_ANALYSES", raising=False)
    assert set(registered()) == {"ct-chest"}
    with pytest.raises(UnknownAnalysisError):
        import_path("noop")
    with pytest.raises(ValueError, match="unknown analysis 'test'"):
        Rule(name="r", analysis="test")


def test_test_suite_registers_the_test_analyses() -> None:
    assert import_path("test") == "pacs.jobs.testing:analyse_test"
    assert Rule(name="r", analysis="noop").analysis == "noop"
