"""Routing rules: which series of a stable study go to which analysis, with what priority.

A rules file is YAML (or JSON, which YAML reads too)::

    rules:
      - name: ct-chest-axial          # unique
        analysis: ct-chest            # a name in pacs.jobs.registry
        priority: 10                  # higher runs first
        when:                         # every condition must hold
          modality: [CT]
          orientation: [AXIAL]
          instances: {min: 50}
        any_of:                       # and at least one of these (if given)
          - body_part_examined: [CHEST]
          - study_description: "(?i)chest|thorax"

A bad file is refused as a whole with the line and reason of its first error
(``RulesError``); a ``RuleBook`` that fails to reload keeps the rules it had.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pacs.jobs import JobError
from pacs.jobs.registry import registered

log = logging.getLogger(__name__)

CHEST_WORDS = r"(?i)chest|thorax|thoracic|lung|груд|легк|ОГК"

DEFAULT_RULES = f"""\
rules:
  - name: ct-chest-axial
    analysis: ct-chest
    priority: 10
    when:
      modality: [CT]
      orientation: [AXIAL]
      instances: {{min: 50}}
      slice_thickness: {{max: 5.0}}
    any_of:
      - body_part_examined: [CHEST, THORAX, LUNG]
      - study_description: "{CHEST_WORDS}"
      - series_description: "{CHEST_WORDS}"
"""
"""The built-in rule set: axial CT of the chest with at least 50 slices -> ct-chest."""


class RulesError(JobError):
    """A rules file that cannot be used; ``line`` is 1-based (0 when unknown)."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        where = f"{source} line {line}" if line else source
        super().__init__(f"{where}: {reason}")


class Range(BaseModel):
    """An inclusive numeric range; either end may be open."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None

    def holds(self, value: float | None) -> bool:
        """True when ``value`` is known and within the range."""
        if value is None:
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Conditions(BaseModel):
    """Conditions on a series (and its study); all given ones must hold."""

    model_config = ConfigDict(extra="forbid")
    modality: list[str] | None = None
    body_part_examined: list[str] | None = None
    study_description: str | None = None  # regex, searched
    series_description: str | None = None  # regex, searched
    image_type_contains: list[str] | None = None  # every value present in ImageType
    orientation: list[str] | None = None  # AXIAL, CORONAL, SAGITTAL, OBLIQUE
    slice_thickness: Range | None = None
    instances: Range | None = None
    sop_class_uid: list[str] | None = None
    source_ae_title: list[str] | None = None
    source_organisation: list[str] | None = None

    @field_validator("study_description", "series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from None
        return value

    def holds(self, s: SeriesFacts) -> bool:
        """True when every given condition holds for ``s``."""
        checks = (
            _one_of(self.modality, s.modality),
            _one_of(self.body_part_examined, s.body_part_examined),
            _search(self.study_description, s.study_description),
            _search(self.series_description, s.series_description),
            self.image_type_contains is None
            or {v.upper() for v in self.image_type_contains}
            <= {v.strip().upper() for v in s.image_type.split("\\")},
            _one_of(self.orientation, s.orientation),
            self.slice_thickness is None or self.slice_thickness.holds(s.slice_thickness),
            self.instances is None or self.instances.holds(s.instances),
            _one_of(self.sop_class_uid, s.sop_class_uid, fold=False),
            _one_of(self.source_ae_title, s.source_ae_title),
            _one_of(self.source_organisation, s.source_organisation),
        )
        return all(checks)


def _one_of(allowed: list[str] | None, value: str, fold: bool = True) -> bool:
    if allowed is None:
        return True
    if fold:
        return value.strip().casefold() in {a.strip().casefold() for a in allowed}
    return value in allowed


def _search(pattern: str | None, value: str) -> bool:
    return pattern is None or re.search(pattern, value) is not None


class Rule(BaseModel):
    """One routing rule."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    analysis: str
    priority: int = 0
    enabled: bool = True
    when: Conditions = Conditions()
    any_of: list[Conditions] = []
    options: dict[str, Any] = {}

    @field_validator("analysis")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in (known := registered()):
            raise ValueError(f"unknown analysis {value!r} (known: {', '.join(sorted(known))})")
        return value

    def matches(self, s: SeriesFacts) -> bool:
        """True when this (enabled) rule selects series ``s``."""
        return (
            self.enabled
            and self.when.holds(s)
            and (not self.any_of or any(c.holds(s) for c in self.any_of))
        )


class RuleFile(BaseModel):
    """The document: a list of uniquely named rules."""

    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return rules


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What rules see of one series."""

    series_instance_uid: str
    modality: str
    body_part_examined: str
    study_description: str
    series_description: str
    image_type: str
    orientation: str
    slice_thickness: float | None
    instances: int
    sop_class_uid: str
    source_ae_title: str
    source_organisation: str


@dataclass(frozen=True, slots=True)
class Route:
    """One job to create: an analysis of some series of a study."""

    analysis: str
    rule: str
    priority: int
    series_instance_uids: list[str]
    options: dict[str, Any]


class RuleSet:
    """A validated list of rules."""

    def __init__(self, rules: list[Rule], source: str) -> None:
        self.rules = rules
        self.source = source

    def route(self, series: list[SeriesFacts]) -> list[Route]:
        """The jobs for a stable study: per analysis, every series a rule selects; the
        first matching rule (highest priority) names the job and gives its options."""
        routes: dict[str, Route] = {}
        for rule in sorted(self.rules, key=lambda r: -r.priority):
            chosen = [s.series_instance_uid for s in series if rule.matches(s)]
            if not chosen:
                continue
            if rule.analysis in routes:
                known = routes[rule.analysis].series_instance_uids
                known.extend(uid for uid in chosen if uid not in known)
            else:
                routes[rule.analysis] = Route(
                    rule.analysis, rule.name, rule.priority, chosen, dict(rule.options)
                )
        return list(routes.values())

    def as_json(self) -> list[dict[str, Any]]:
        """The rules as JSON (``/api/rules``)."""
        return [rule.model_dump(exclude_none=True) for rule in self.rules]


def parse_rules(text: str, source: str = "rules") -> RuleSet:
    """Validate a rules document; ``RulesError`` with the line of the first problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise RulesError(source, line, f"not valid YAML/JSON: {reason}") from None
    if not isinstance(data, dict):
        raise RulesError(source, 1, "expected a mapping with a 'rules' list")
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = tuple(error["loc"])
        path = ".".join(str(p) for p in location) or "document"
        raise RulesError(source, _line_of(node, location), f"{path}: {error['msg']}") from None
    return RuleSet(parsed.rules, source)


def _line_of(node: yaml.Node | None, location: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at ``location`` (or of its deepest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 0
    for key in location:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == key]
            if not found:
                break
            key_node, node = found[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_rules(path: Path | None) -> RuleSet:
    """The rules of ``path``, or the built-in default rules when ``path`` is None."""
    if path is None:
        return parse_rules(DEFAULT_RULES, "built-in rules")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), 0, f"cannot read: {exc}") from None
    return parse_rules(text, str(path))


class RuleBook:
    """The rules a process runs with, reloaded when the file changes; a file that fails to
    load leaves the current rules in place."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self._rules = load_rules(path)
        self.last_error = ""

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    @property
    def rules(self) -> RuleSet:
        """The rules in force."""
        with self._lock:
            return self._rules

    def reload(self) -> RuleSet:
        """Load the file again; on ``RulesError`` keep the current rules and re-raise."""
        mtime = self._stat()
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            with self._lock:
                self._mtime, self.last_error = mtime, str(exc)
            raise
        with self._lock:
            self._rules, self._mtime, self.last_error = rules, mtime, ""
        log.info("routing rules loaded from %s: %d rule(s)", rules.source, len(rules.rules))
        return rules

    def reload_if_changed(self) -> None:
        """Reload when the file's modification time changed (errors are logged)."""
        if self.path is None or self._stat() == self._mtime:
            return
        try:
            self.reload()
        except RulesError as exc:
            log.error("routing rules not reloaded, keeping the previous ones: %s", exc)
