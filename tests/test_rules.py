"""Routing rules: the default rule set, conditions, bad files refused with line and reason,
a bad reload keeping the rules in force."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from pacs.jobs.rules import RuleBook, RulesError, SeriesFacts, load_rules, parse_rules

CHEST = SeriesFacts(
    series_instance_uid="1.2.3",
    modality="CT",
    body_part_examined="CHEST",
    study_description="CT OGK",
    series_description="AXIAL 1mm",
    image_type="ORIGINAL\\PRIMARY\\AXIAL",
    orientation="AXIAL",
    slice_thickness=1.0,
    instances=120,
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    source_ae_title="CT1",
    source_organisation="Clinic 1",
)


def test_default_rules_send_axial_chest_ct_of_50_slices_to_ct_chest() -> None:
    rules = load_rules(None)
    (route,) = rules.route([CHEST])
    assert (route.analysis, route.series_instance_uids) == ("ct-chest", ["1.2.3"])
    assert rules.route([replace(CHEST, instances=49)]) == []
    assert rules.route([replace(CHEST, orientation="CORONAL")]) == []
    assert rules.route([replace(CHEST, modality="MR")]) == []
    assert rules.route([replace(CHEST, slice_thickness=None)]) == []
    head = replace(CHEST, body_part_examined="HEAD", study_description="CT head")
    assert rules.route([head]) == []
    by_words = replace(CHEST, body_part_examined="", study_description="КТ ОГК")  # noqa: RUF001
    assert [r.analysis for r in rules.route([by_words])] == ["ct-chest"]


def test_conditions_and_grouping_by_analysis() -> None:
    rules = parse_rules(
        """
rules:
  - name: thin
    analysis: test
    priority: 3
    when:
      image_type_contains: [primary, axial]
      slice_thickness: {min: 0.5, max: 1.5}
      instances: {min: 10, max: 500}
      sop_class_uid: [1.2.840.10008.5.1.4.1.1.2]
      source_ae_title: [ct1]
      source_organisation: [clinic 1]
      series_description: "^AXIAL"
  - name: other-org
    analysis: test
    priority: 9
    when: {source_organisation: [Clinic 2]}
    options: {sleep_seconds: 1}
  - name: disabled-one
    analysis: noop
    enabled: false
"""
    )
    second = replace(CHEST, series_instance_uid="1.2.4", source_organisation="Clinic 2")
    (route,) = rules.route(
        [CHEST, second, replace(CHEST, series_instance_uid="9", slice_thickness=5)]
    )
    assert (
        route.rule == "other-org" and route.priority == 9 and route.options == {"sleep_seconds": 1}
    )
    assert route.series_instance_uids == ["1.2.4", "1.2.3"]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "rules:\n  - name: a\n    analysis: test\n    when:\n      slice_thickness: {min: x}\n",
            5,
            "rules.0.when.slice_thickness.min: Input should be a valid number",
        ),
        ("rules:\n  - name: a\n    analysis: nope\n", 3, "unknown analysis 'nope'"),
        (
            "rules:\n  - name: a\n    analysis: test\n    when:\n      modality: CT\n",
            5,
            "rules.0.when.modality: Input should be a valid list",
        ),
        (
            "rules:\n  - name: a\n    analysis: test\n    when:\n      bodypart: [CHEST]\n",
            5,
            "rules.0.when.bodypart: Extra inputs are not permitted",
        ),
        (
            "rules:\n  - name: a\n    analysis: test\n    when:\n      study_description: '(x'\n",
            5,
            "bad regular expression",
        ),
        (
            "rules:\n  - name: a\n    analysis: test\n  - name: a\n    analysis: noop\n",
            1,
            "duplicate rule name 'a'",
        ),
        ("rules:\n  - name: a\n   analysis: test\n", 3, "not valid YAML/JSON"),
        (
            '{"rules": [{"name": "a", "analysis": "test",\n "priority": "high"}]}',
            2,
            "rules.0.priority: Input should be a valid integer",
        ),
        ("- just\n- a list\n", 1, "expected a mapping"),
        ("rules:\n  - analysis: test\n", 2, "rules.0.name: Field required"),
    ],
)
def test_bad_rules_are_refused_with_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "rules.yaml")
    assert caught.value.line == line, caught.value
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"rules.yaml line {line}: ")


def test_bad_reload_keeps_the_rules_in_force(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    analysis: test\n")
    book = RuleBook(path)
    path.write_text("rules:\n  - name: b\n    analysis: test\n    priority: [1]\n")
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's granularity
    book.reload_if_changed()
    assert [r.name for r in book.rules.rules] == ["a"] and "line 4" in book.last_error
    with pytest.raises(RulesError):
        book.reload()
    path.write_text("rules:\n  - name: c\n    analysis: noop\n")
    os.utime(path, ns=(2, 2))
    book.reload_if_changed()
    assert [r.name for r in book.rules.rules] == ["c"] and book.last_error == ""


def test_unreadable_or_bad_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        RuleBook(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: 5\n")
    with pytest.raises(RulesError, match="line 1: rules: Input should be a valid list"):
        RuleBook(bad)
