"""Every place that names the jobs agrees with their declarations in `bgworkers.jobs`.

A job is declared once, as a `JobSpec`; what must follow it is checked here, all in
one test that lists every disagreement: the settings model (`JobsSettings`, one field
per job of the spec's settings type), the shipped settings.toml (a table per job,
in registry order, naming every key of the job's settings, set or commented out),
the alert rules (counters the job has, thresholds that are `[alerts]` settings), the
Prometheus rules and their tests (alert events the jobs log, run outcomes that
exist, jobs that exist) and the README's alert table.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bgworkers.engine.alerts import Rule
from bgworkers.engine.history import RunStatus
from bgworkers.engine.job import JobSpec
from bgworkers.engine.logs import LEVELS
from bgworkers.jobs import DASHBOARD_FAST, REGISTRY
from bgworkers.settings import AlertsSettings, JobsSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "settings.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus"
README = ROOT / "README.md"
#: The runner's own counter of a tick, never a job's.
RUNNER_COUNTERS = {"tenants"}


def registry_problems(specs: tuple[JobSpec[Any], ...]) -> list[str]:
    problems = []
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        problems.append(f"registry: a job name is declared twice: {names}")
    for spec in specs:
        where = f"registry: {spec.name}"
        if len(set(spec.counters)) != len(spec.counters):
            problems.append(f"{where}: a counter is listed twice: {spec.counters}")
        if RUNNER_COUNTERS & set(spec.counters):
            problems.append(f"{where}: counters name the runner's {sorted(RUNNER_COUNTERS)}")
        events = spec.alert_events
        if len(set(events)) != len(events):
            problems.append(f"{where}: an alert event is declared twice: {events}")
        for rule in spec.rules:
            problems += rule_problems(f"{where}: rule {rule.event}", rule, spec.counters)
    return problems


def rule_problems(where: str, rule: Rule, counters: tuple[str, ...]) -> list[str]:
    problems = []
    if rule.counter not in counters:
        problems.append(f"{where}: counter {rule.counter!r} is not one of the job's {counters}")
    if rule.threshold not in AlertsSettings.model_fields:
        problems.append(f"{where}: threshold {rule.threshold!r} is not an [alerts] setting")
    if rule.level not in LEVELS:
        problems.append(f"{where}: level {rule.level!r} is not a log level")
    if not rule.event.startswith("alert_"):
        problems.append(f"{where}: event {rule.event!r} does not start with alert_")
    return problems


def model_problems(specs: tuple[JobSpec[Any], ...]) -> list[str]:
    """JobsSettings: one field per job, in registry order, of the spec's settings type."""
    problems = []
    fields = JobsSettings.model_fields
    names = [spec.name for spec in specs]
    if list(fields) != names:
        problems.append(f"JobsSettings fields {list(fields)} != registry {names}")
    defaults = JobsSettings()
    for spec in specs:
        field = fields.get(spec.name)
        if field is None:
            continue
        if field.annotation is not spec.settings:
            problems.append(
                f"JobsSettings.{spec.name} is {field.annotation}, the registry "
                f"declares {spec.settings.__name__}"
            )
        elif type(defaults.get(spec.name)) is not spec.settings:
            problems.append(
                f"JobsSettings.{spec.name} defaults to a {type(defaults.get(spec.name)).__name__}"
            )
    return problems


def toml_sections(text: str) -> dict[str, list[str]]:
    """The lines of each [table] of a TOML file, by table name."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^\[([\w.]+)\]", line)
        if header:
            current = header.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def named_keys(lines: list[str]) -> set[str]:
    """Keys a table sets (`key = ...`) or shows commented out (`# key = ...`, or
    `# or: key = ...` after another key)."""
    keys = set()
    for line in lines:
        keys.update(re.findall(r"^(\w+)\s*=", line))
        keys.update(re.findall(r"#\s*(?:or:\s*)?(\w+)\s*=", line))
    return keys


def shipped_problems(specs: tuple[JobSpec[Any], ...], text: str) -> list[str]:
    """settings.toml: a [jobs.NAME] table per job, in registry order, naming every key."""
    problems = []
    tables = list(tomllib.loads(text).get("jobs", {}))
    names = [spec.name for spec in specs]
    if tables != names:
        problems.append(f"settings.toml: job tables {tables} != registry {names}")
    sections = toml_sections(text)
    for spec in specs:
        lines = sections.get(f"jobs.{spec.name}")
        if lines is None:
            continue
        missing = set(spec.settings.model_fields) - named_keys(lines)
        if missing:
            problems.append(
                f"settings.toml: [jobs.{spec.name}] does not name "
                f"{', '.join(sorted(missing))} (set, or commented out)"
            )
    return problems


def prometheus_problems(specs: tuple[JobSpec[Any], ...], rules: str, rule_tests: str) -> list[str]:
    """The alert rules count events the jobs log and outcomes runs have; their tests use
    jobs that exist with events those jobs log."""
    problems = []
    by_name = {spec.name: spec for spec in specs}
    declared = {event for spec in specs for event in spec.alert_events}
    per_run = {rule.event for spec in specs for rule in spec.rules}
    used = set(re.findall(r'event="(\w+)"', rules))
    for event in sorted(used - declared):
        problems.append(f"bgworkers.rules.yml: event {event!r} is logged by no job")
    for event in sorted(per_run - used):
        problems.append(f"bgworkers.rules.yml: no rule for the alert event {event!r}")
    outcomes = {status.value for status in RunStatus}
    for text, file in ((rules, "bgworkers.rules.yml"), (rule_tests, "bgworkers.rules.test.yml")):
        for group in re.findall(r'status(?:=~?"|: )([\w|]+)', text):
            for status in sorted(set(group.split("|")) - outcomes):
                problems.append(f"{file}: status {status!r} is no run outcome")
    for labels in re.findall(r"\{([^{}]*job_name[^{}]*)\}", rule_tests):
        job = re.search(r'job_name(?:="|: )(\w+)', labels)
        event = re.search(r'event="(\w+)"', labels)
        if job is None:
            continue
        spec = by_name.get(job.group(1))
        if spec is None:
            problems.append(f"bgworkers.rules.test.yml: job_name {job.group(1)!r} is no job")
        elif event is not None and event.group(1) not in spec.alert_events:
            problems.append(f"bgworkers.rules.test.yml: {spec.name} logs no {event.group(1)!r}")
    return list(dict.fromkeys(problems))  # a series is named on many lines


def readme_problems(specs: tuple[JobSpec[Any], ...], readme: str) -> list[str]:
    """The README's alert table: a row per rule with its level and threshold setting."""
    problems = []
    rules = {rule.event: rule for spec in specs for rule in spec.rules}
    for event, rule in sorted(rules.items()):
        row = re.search(rf"^\| `{event}` \| (\w+) \|.*\| `(\w+)`", readme, re.M)
        if row is None:
            problems.append(f"README: the alert table has no row for {event}")
        elif (row.group(1), row.group(2)) != (rule.level, rule.threshold):
            problems.append(
                f"README: {event} is {row.group(1)} over {row.group(2)}, declared "
                f"{rule.level} over {rule.threshold}"
            )
    for spec in specs:
        if f"`{spec.name}`" not in readme:
            problems.append(f"README: job {spec.name} is not named")
    return problems


def test_declarations_agree() -> None:
    problems = [
        *registry_problems(REGISTRY),
        *model_problems(REGISTRY),
        *shipped_problems(REGISTRY, SHIPPED.read_text()),
        *prometheus_problems(
            REGISTRY,
            (PROMETHEUS / "bgworkers.rules.yml").read_text(),
            (PROMETHEUS / "bgworkers.rules.test.yml").read_text(),
        ),
        *readme_problems(REGISTRY, README.read_text()),
    ]
    assert problems == [], "\n".join(problems)


def test_a_run_never_gets_another_jobs_table() -> None:
    """The spec hands a run its own table; a table of another type is refused, not run."""
    assert type(DASHBOARD_FAST.settings_in(Settings())) is DASHBOARD_FAST.settings
    misnamed = dataclasses.replace(DASHBOARD_FAST, name="serial_outbox")
    with pytest.raises(
        TypeError,
        match=r"jobs\.serial_outbox is a SerialOutboxSettings, "
        r"not a DashboardFastSettings",
    ):
        misnamed.settings_in(Settings())
