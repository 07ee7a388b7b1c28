"""due(): what fires at a given time, table-driven on real triggers; no clock, no thread."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bgworkers.engine.scheduler import (
    EPOCH,
    STILL_RUNNING,
    Firing,
    Timing,
    due,
    job_timing,
    make_trigger,
    tick_identity,
)
from bgworkers.settings import SchedulerSettings, SerialOutboxSettings
from bgworkers.settings.cron import cron_trigger

T = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)  # a 5-minute tick
MINUTE = timedelta(minutes=1)
GRACE = timedelta(seconds=60)


def every(interval: str, grace: timedelta | None = GRACE, coalesce: bool = True) -> Timing:
    job = SerialOutboxSettings(every=interval)  # type: ignore[arg-type]
    return Timing(make_trigger(job, SchedulerSettings()), grace, coalesce)


def test_nothing_fires_before_its_time() -> None:
    result = due({"a": every("5m")}, {"a": T}, T - timedelta(microseconds=1))
    assert result.firings == ()
    assert result.next_runs == {"a": T}
    assert result.wake_at() == T


def test_a_firing_on_time_runs_and_the_next_follows_on_the_epoch_grid() -> None:
    result = due({"a": every("5m")}, {"a": T}, T)
    assert result.firings == (Firing("a", T),)
    assert result.next_runs == {"a": T + 5 * MINUTE}


@pytest.mark.parametrize("interval", ["7s", "1m", "5m", "15m", "1h"])
def test_intervals_count_from_the_epoch(interval: str) -> None:
    timing = every(interval)
    now = datetime(2026, 11, 22, 10, 3, 12, 345678, tzinfo=UTC)
    first = timing.trigger.get_next_fire_time(None, now)
    step = timedelta(seconds=float(interval[:-1]) * {"s": 1, "m": 60, "h": 3600}[interval[-1]])
    assert (first - EPOCH) % step == timedelta(0) and now < first <= now + step
    fired = []
    next_runs = {"a": first}
    for at in (first, first + step, first + 2 * step + timedelta(seconds=0.5)):
        result = due({"a": timing}, next_runs, at)
        fired += [f.run_time for f in result.firings]
        next_runs = result.next_runs
    assert fired == [first, first + step, first + 2 * step]
    assert next_runs["a"] == first + 3 * step


@pytest.mark.parametrize(
    ("late", "missed"),
    [
        (timedelta(0), None),
        (timedelta(seconds=59.9), None),
        (GRACE, None),  # the grace itself is still in time
        (GRACE + timedelta(microseconds=1), "fired 60.0s late"),
        (timedelta(seconds=75), "fired 75.0s late"),
    ],
)
def test_a_firing_later_than_the_misfire_grace_is_missed(
    late: timedelta, missed: str | None
) -> None:
    result = due({"a": every("5m")}, {"a": T}, T + late)
    assert result.firings == (Firing("a", T, missed),)
    assert result.next_runs == {"a": T + 5 * MINUTE}  # missed or not, the schedule goes on


def test_no_grace_never_misses() -> None:
    result = due({"a": every("5m", grace=None)}, {"a": T}, T + timedelta(days=3))
    assert [f.missed for f in result.firings] == [None]


def test_coalesce_runs_several_overdue_firings_once_and_records_only_that_one() -> None:
    now = T + 3 * MINUTE + timedelta(seconds=1)
    result = due({"a": every("1m")}, {"a": T}, now)
    assert result.firings == (Firing("a", T + 3 * MINUTE),)
    assert result.next_runs == {"a": T + 4 * MINUTE}
    # all of them too late: the one left is recorded missed
    short = every("1m", grace=timedelta(seconds=30))
    result = due({"a": short}, {"a": T}, T + 10 * MINUTE + timedelta(seconds=45))
    assert result.firings == (Firing("a", T + 10 * MINUTE, "fired 45.0s late"),)


def test_without_coalesce_each_overdue_firing_is_run_or_missed_in_order() -> None:
    now = T + 3 * MINUTE + timedelta(seconds=1)
    result = due({"a": every("1m", coalesce=False)}, {"a": T}, now)
    assert result.firings == (
        Firing("a", T, "fired 181.0s late"),
        Firing("a", T + MINUTE, "fired 121.0s late"),
        Firing("a", T + 2 * MINUTE, "fired 61.0s late"),
        Firing("a", T + 3 * MINUTE),
    )
    assert result.next_runs == {"a": T + 4 * MINUTE}


@pytest.mark.parametrize(("coalesce", "count"), [(True, 1), (False, 3)])
def test_a_job_still_running_misses_its_firings(coalesce: bool, count: int) -> None:
    short = timedelta(seconds=10)
    timings = {"a": every("1m", short, coalesce), "b": every("1m", short)}
    now = T + 2 * MINUTE + timedelta(seconds=30)  # late, too: still running is the reason
    result = due(timings, {"a": T, "b": T + 2 * MINUTE}, now, running={"a"})
    assert [f for f in result.firings if f.name == "a"] == [
        Firing("a", T + n * MINUTE, STILL_RUNNING) for n in range(3 - count, 3)
    ]
    assert [f for f in result.firings if f.name == "b"] == [
        Firing("b", T + 2 * MINUTE, "fired 30.0s late")
    ]  # another job is not held up
    assert result.next_runs == {"a": T + 3 * MINUTE, "b": T + 3 * MINUTE}


def test_entries_without_a_next_time_never_fire() -> None:
    timings = {"a": every("1m"), "b": every("1m")}
    result = due(timings, {"a": None}, T + timedelta(days=1))
    assert result.firings == ()
    assert result.next_runs == {"a": None, "b": None}
    assert result.wake_at() is None


def test_an_entry_no_longer_timed_is_forgotten() -> None:
    result = due({"a": every("1m")}, {"a": T, "gone": T}, T)
    assert result.firings == (Firing("a", T),)
    assert result.next_runs == {"a": T + MINUTE}


def test_cron_fires_in_the_scheduler_time_zone_across_a_dst_change() -> None:
    timing = Timing(cron_trigger("0 6 * * *", "Europe/Berlin"), GRACE)
    saturday = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    first = timing.trigger.get_next_fire_time(None, saturday)
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 5, 0, tzinfo=UTC)  # CET again
    result = due({"d": timing}, {"d": first}, datetime(2026, 10, 25, 5, 0, 2, tzinfo=UTC))
    assert [(f.run_time, f.missed) for f in result.firings] == [(first, None)]
    following = result.next_runs["d"]
    assert following is not None
    assert following.astimezone(UTC) == datetime(2026, 10, 26, 5, 0, tzinfo=UTC)
    assert following.utcoffset() == timedelta(hours=1)


def test_crontab_weekdays_hold_in_due() -> None:
    timing = Timing(cron_trigger("30 2 * * 1-5", "UTC"), GRACE)  # weekdays, crontab's way
    friday = datetime(2026, 11, 20, 2, 30, tzinfo=UTC)
    result = due({"w": timing}, {"w": friday}, friday)
    assert [f.run_time for f in result.firings] == [friday]
    assert result.next_runs["w"] == friday + timedelta(days=3)  # Monday


def test_a_jittered_firing_is_identified_by_its_scheduled_time() -> None:
    job = SerialOutboxSettings(every="5m", jitter="30s")  # type: ignore[arg-type]
    timing = job_timing(job, SchedulerSettings())
    assert timing.trigger.get_next_fire_time(None, T - timedelta(seconds=1)) == T
    first = timing.first(T - timedelta(seconds=1))
    assert first is not None
    assert T <= first <= T + timedelta(seconds=30)
    assert due({"a": timing}, {"a": first}, first - timedelta(microseconds=1)).firings == ()
    [firing] = due({"a": timing}, {"a": first}, first).firings
    assert firing == Firing("a", first)
    assert tick_identity(job, SchedulerSettings(), firing.run_time) == T


@pytest.mark.parametrize("table", [{"every": "5m"}, {"cron": "*/5 * * * *"}])
def test_jittered_firings_keep_to_their_ticks(table: dict[str, str]) -> None:
    """Each firing falls within the jitter after its own tick, however many follow:
    the next tick is counted from the last tick, not from the jittered firing."""
    job = SerialOutboxSettings(**table, jitter="2m")  # type: ignore[arg-type]
    timing = job_timing(job, SchedulerSettings())
    next_runs = {"a": timing.first(T - timedelta(seconds=1))}
    fired = []
    for _ in range(24):
        at = next_runs["a"]
        assert at is not None
        result = due({"a": timing}, next_runs, at)
        fired += [f.run_time for f in result.firings if f.missed is None]
        next_runs = result.next_runs
    ticks = [T + n * 5 * MINUTE for n in range(24)]
    assert [tick_identity(job, SchedulerSettings(), at) for at in fired] == ticks
    assert all(tick <= at <= tick + 2 * MINUTE for tick, at in zip(ticks, fired, strict=True))
