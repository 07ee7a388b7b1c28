"""Cron expressions keep crontab's meaning; interval ticks align to the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bgworkers.engine.scheduler import describe_trigger, make_trigger, next_fire, previous_fire
from bgworkers.settings import SchedulerSettings, SerialOutboxSettings
from bgworkers.settings.cron import cron_trigger, crontab_weekdays

SUNDAY = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)  # a Sunday


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1/2", "mon,wed,fri"),
        ("mon,wed", "mon,wed"),
        ("SAT", "sat"),
    ],
)
def test_crontab_weekdays(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "fri-mon", "5-1", "*/0", "x", "mon-"])
def test_bad_weekdays(field: str) -> None:
    with pytest.raises(ValueError):
        crontab_weekdays(field)


def test_weekday_zero_is_sunday_as_in_crontab() -> None:
    fire = cron_trigger("0 9 * * 0", "UTC").get_next_fire_time(None, SUNDAY)
    assert fire == datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    fire = cron_trigger("30 2 * * 1-5", "UTC").get_next_fire_time(None, SUNDAY)
    assert fire == datetime(2026, 11, 23, 2, 30, tzinfo=UTC)  # Monday


def test_cron_uses_scheduler_time_zone() -> None:
    fire = cron_trigger("0 6 * * *", "Asia/Bangkok").get_next_fire_time(None, SUNDAY)
    assert fire is not None
    assert fire.astimezone(UTC) == datetime(2026, 11, 22, 23, 0, tzinfo=UTC)


def _at(hour: int, minute: int, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 11, 22, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("every", "now", "expected"),
    [
        ("5m", _at(10, 3, 12), _at(10, 5)),
        ("1m", _at(10, 3, 0, 1), _at(10, 4)),
        ("1h", _at(10, 59), _at(11, 0)),
        ("15m", _at(10, 15), _at(10, 15)),
    ],
)
def test_intervals_are_aligned_to_the_wall_clock(
    every: str, now: datetime, expected: datetime
) -> None:
    job = SerialOutboxSettings(every=every)  # type: ignore[arg-type]
    assert next_fire(job, SchedulerSettings(), now) == expected


def test_jitter_stays_within_bounds() -> None:
    job = SerialOutboxSettings(every="5m", jitter="20s")  # type: ignore[arg-type]
    trigger = make_trigger(job, SchedulerSettings())
    base = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)
    fires = {trigger.get_next_fire_time(None, base - timedelta(seconds=1)) for _ in range(50)}
    assert all(base <= f <= base + timedelta(seconds=20) for f in fires)
    assert len(fires) > 1


def test_describe_trigger() -> None:
    assert describe_trigger(SerialOutboxSettings()) == "every 5m"
    assert describe_trigger(SerialOutboxSettings(cron="*/5 * * * *")) == "cron '*/5 * * * *'"


@pytest.mark.parametrize(
    ("table", "now", "expected"),
    [
        ({"every": "5m"}, SUNDAY + timedelta(minutes=7, seconds=3), SUNDAY + timedelta(minutes=5)),
        ({"every": "5m"}, SUNDAY, SUNDAY),  # a tick due right now is the latest one
        ({"every": "1h"}, SUNDAY - timedelta(seconds=1), SUNDAY - timedelta(hours=1)),
        ({"cron": "30 2 * * *"}, SUNDAY, SUNDAY.replace(hour=2, minute=30)),
        ({"cron": "0 9 * * 1-5"}, SUNDAY, SUNDAY.replace(hour=9) - timedelta(days=2)),  # Friday
        ({"cron": "0 0 1 * *"}, SUNDAY, datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_previous_fire_is_the_latest_scheduled_time(
    table: dict[str, str], now: datetime, expected: datetime
) -> None:
    job = SerialOutboxSettings(**table)  # type: ignore[arg-type]
    assert previous_fire(job, SchedulerSettings(), now) == expected
