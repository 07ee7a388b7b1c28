"""reconcile(old, new) is pure: table-driven cases; plans come from settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bgworkers.engine.scheduler import (
    Changes,
    Plan,
    changed_sections,
    plans,
    reconcile,
    tick_identity,
)
from bgworkers.settings import SchedulerSettings, SerialOutboxSettings, Settings

P5 = Plan("every 5m", 0.0, 60.0, True)
P1 = Plan("every 1m", 0.0, 60.0, True)

CASES = [
    ("nothing to nothing", {}, {}, Changes()),
    ("start", {}, {"a": P5, "b": P1}, Changes(add=("a", "b"))),
    ("no change", {"a": P5}, {"a": P5}, Changes()),
    ("disable", {"a": P5, "b": P1}, {"a": P5}, Changes(remove=("b",))),
    ("new interval", {"a": P5}, {"a": P1}, Changes(reschedule=("a",))),
    (
        "every to cron",
        {"a": P5},
        {"a": Plan("cron '*/5 * * * *' UTC", 0, 60, True)},
        Changes(reschedule=("a",)),
    ),
    (
        "cron time zone",
        {"a": Plan("cron '0 6 * * *' UTC", 0, 60, True)},
        {"a": Plan("cron '0 6 * * *' Asia/Bangkok", 0, 60, True)},
        Changes(reschedule=("a",)),
    ),
    ("jitter", {"a": P5}, {"a": Plan("every 5m", 10.0, 60.0, True)}, Changes(reschedule=("a",))),
    ("misfire grace", {"a": P5}, {"a": Plan("every 5m", 0.0, 30.0, True)}, Changes(modify=("a",))),
    ("coalesce", {"a": P5}, {"a": Plan("every 5m", 0.0, 60.0, False)}, Changes(modify=("a",))),
    (
        "all at once",
        {"a": P5, "b": P5, "c": P5, "d": P5},
        {"b": P1, "c": Plan("every 5m", 0, 5, True), "d": P5, "e": P1},
        Changes(add=("e",), remove=("a",), reschedule=("b",), modify=("c",)),
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reconcile(old: dict[str, Plan], new: dict[str, Plan], expected: Changes) -> None:
    assert reconcile(old, new) == expected
    assert bool(expected) == (old != new)
    assert reconcile(new, new) == Changes()


def test_plans_hold_enabled_built_jobs_only() -> None:
    settings = Settings(
        jobs={"heartbeat": {"enabled": True, "every": "10s", "misfire_grace": "5s"}}
    )
    assert plans(settings)["heartbeat"] == Plan("every 10s", 0.0, 5.0, True)
    assert "heartbeat" not in plans(Settings())
    inherited = Settings(jobs={"heartbeat": {"enabled": True}}, scheduler={"misfire_grace": "2m"})
    assert plans(inherited)["heartbeat"].misfire_grace == 120.0


def test_reload_changes_from_settings() -> None:
    old = Settings(jobs={"heartbeat": {"enabled": True, "every": "1m"}})
    new = Settings(jobs={"heartbeat": {"enabled": True, "cron": "*/2 * * * *"}})
    off = Settings(jobs={"heartbeat": {"enabled": False}})
    assert reconcile(plans(old), plans(new)) == Changes(reschedule=("heartbeat",))
    assert reconcile(plans(new), plans(off)) == Changes(remove=("heartbeat",))
    assert reconcile(plans(off), plans(old)).describe() == {"add": ["heartbeat"]}


def test_tick_identity_removes_jitter() -> None:
    job = SerialOutboxSettings(every="5m", jitter="30s")  # type: ignore[arg-type]
    tick = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)
    for delay in (0, 1, 29.5):
        jittered = tick.replace(second=int(delay), microsecond=int(delay % 1 * 1e6))
        assert tick_identity(job, SchedulerSettings(), jittered) == tick
    plain = SerialOutboxSettings(every="5m")  # type: ignore[arg-type]
    assert tick_identity(plain, SchedulerSettings(), tick) == tick


@pytest.mark.parametrize("section", list(Settings.model_fields))
def test_a_change_in_any_settings_section_is_reported(section: str) -> None:
    changes = {
        "database": {"pool_size": 2},
        "tenants": {"exclude": ["x"]},
        "erp": {"timezone": "UTC"},
        "scheduler": {"max_workers": 2},
        "logging": {"level": "debug"},
        "alerts": {"quarantined_per_run": 3},
        "metrics": {"listen": "127.0.0.1:9464"},
        "jobs": {"heartbeat": {"enabled": True}},
    }
    assert set(changes) == set(Settings.model_fields), "a new section needs a case here"
    new = Settings(**{section: changes[section]})  # type: ignore[arg-type]
    assert changed_sections(Settings(), new) == [section]
