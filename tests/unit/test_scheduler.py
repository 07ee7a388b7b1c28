"""The scheduler thread on a clock the test moves: ticks, one in flight, late firings,
reload in place, the daemon's own calls, stop.  apply() wakes the thread after a move."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bgworkers.engine.clock import FixedClock
from bgworkers.engine.scheduler import EPOCH, STILL_RUNNING, Changes, Scheduler
from bgworkers.jobs import REGISTRY
from bgworkers.settings import Settings

T = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
WAIT = 5.0  # seconds: the longest anything here may take to happen


def only(**heartbeat: Any) -> Settings:
    """Settings with the heartbeat job alone enabled."""
    jobs: dict[str, Any] = {spec.name: {"enabled": False} for spec in REGISTRY}
    jobs["heartbeat"] = {
        "enabled": True,
        **({} if "cron" in heartbeat else {"every": "1m"}),
        **heartbeat,
    }
    return Settings(jobs=jobs)


class Calls:
    """Records what the scheduler hands out; a tick may be held until released."""

    def __init__(self) -> None:
        self.ticks: queue.SimpleQueue[tuple[str, datetime]] = queue.SimpleQueue()
        self.missed: queue.SimpleQueue[tuple[str, datetime, str]] = queue.SimpleQueue()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.fail: set[datetime] = set()  # ticks that raise
        self.during_tick: Callable[[datetime], None] = lambda _run_time: None

    def on_tick(self, job: str, run_time: datetime) -> None:
        self.ticks.put((job, run_time))
        self.during_tick(run_time)
        if self.hold.is_set():
            self.release.wait(WAIT)
        if run_time in self.fail:
            raise RuntimeError("boom")

    def on_missed(self, job: str, run_time: datetime, reason: str) -> None:
        self.missed.put((job, run_time, reason))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T - timedelta(seconds=1))


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def scheduler(calls: Calls, clock: FixedClock) -> Iterator[Scheduler]:
    scheduler = Scheduler(calls.on_tick, calls.on_missed, clock)
    yield scheduler
    calls.release.set()
    scheduler.stop()


def move(scheduler: Scheduler, clock: FixedClock, settings: Settings, to: datetime) -> None:
    clock.at = to
    assert not scheduler.apply(settings)  # no change: only wakes the thread


def nothing_in(q: queue.SimpleQueue[Any]) -> bool:
    return q.empty()


def settle(scheduler: Scheduler) -> None:
    """Wait until no firing is being handled (a tick's callback has returned before)."""
    deadline = time.monotonic() + WAIT
    while scheduler._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not scheduler._running


def test_ticks_fire_on_the_clock_with_their_scheduled_time(
    scheduler: Scheduler, calls: Calls, clock: FixedClock
) -> None:
    settings = only()
    scheduler.apply(settings)
    assert scheduler.next_fire_times() == {"heartbeat": None}  # not started
    scheduler.start()
    assert scheduler.healthy()
    assert scheduler.next_fire_times() == {"heartbeat": T}
    move(scheduler, clock, settings, T - timedelta(microseconds=1))
    move(scheduler, clock, settings, T + timedelta(seconds=2))
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T)
    settle(scheduler)
    move(scheduler, clock, settings, T + MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + MINUTE)
    assert nothing_in(calls.ticks) and nothing_in(calls.missed)
    assert scheduler.next_fire_times() == {"heartbeat": T + 2 * MINUTE}


def test_one_tick_in_flight_per_job(scheduler: Scheduler, calls: Calls, clock: FixedClock) -> None:
    settings = only()
    scheduler.apply(settings)
    scheduler.start()
    calls.hold.set()
    move(scheduler, clock, settings, T)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T)  # and held
    move(scheduler, clock, settings, T + MINUTE)
    assert calls.missed.get(timeout=WAIT) == ("heartbeat", T + MINUTE, STILL_RUNNING)
    time.sleep(0.2)  # recording that miss is over; the held tick still runs
    move(scheduler, clock, settings, T + 2 * MINUTE)
    assert calls.missed.get(timeout=WAIT) == ("heartbeat", T + 2 * MINUTE, STILL_RUNNING)
    calls.hold.clear()
    calls.release.set()
    settle(scheduler)
    move(scheduler, clock, settings, T + 3 * MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 3 * MINUTE)
    assert nothing_in(calls.ticks) and nothing_in(calls.missed)


def test_a_late_firing_is_missed_and_a_tick_that_waited_past_its_grace_too(
    scheduler: Scheduler, calls: Calls, clock: FixedClock
) -> None:
    settings = only(misfire_grace="2m", coalesce=False)
    scheduler.apply(settings)
    scheduler.start()
    move(scheduler, clock, settings, T + 3 * MINUTE + timedelta(seconds=1))
    assert calls.missed.get(timeout=WAIT) == ("heartbeat", T, "fired 181.0s late")
    assert calls.missed.get(timeout=WAIT) == ("heartbeat", T + MINUTE, "fired 121.0s late")
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 2 * MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 3 * MINUTE)
    settle(scheduler)
    # Two firings due, both within the grace; the first takes three minutes.
    calls.during_tick = lambda run_time: (
        setattr(clock, "at", clock.at + 3 * MINUTE) if (run_time == T + 4 * MINUTE) else None
    )
    move(scheduler, clock, settings, T + 5 * MINUTE + timedelta(seconds=1))
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 4 * MINUTE)
    # (the thread may see the moved clock, too: later firings, still running, may come)
    seen = [calls.missed.get(timeout=WAIT)]
    while ("heartbeat", T + 5 * MINUTE, "fired 181.0s late") not in seen:
        seen.append(calls.missed.get(timeout=WAIT))


def test_a_failing_tick_keeps_neither_the_next_firing_nor_the_job_from_running(
    scheduler: Scheduler, calls: Calls, clock: FixedClock
) -> None:
    settings = only(coalesce=False)
    scheduler.apply(settings)
    scheduler.start()
    calls.fail = {T, T + 2 * MINUTE}
    move(scheduler, clock, settings, T + MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + MINUTE)  # same batch
    settle(scheduler)
    move(scheduler, clock, settings, T + 2 * MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 2 * MINUTE)
    settle(scheduler)
    move(scheduler, clock, settings, T + 3 * MINUTE)
    assert calls.ticks.get(timeout=WAIT) == ("heartbeat", T + 3 * MINUTE)
    assert nothing_in(calls.missed) and scheduler.healthy()


def test_reload_in_place(scheduler: Scheduler, clock: FixedClock) -> None:
    clock.at = T + timedelta(seconds=3)
    scheduler.apply(only())
    scheduler.start()
    assert scheduler.next_fire_times() == {"heartbeat": T + MINUTE}

    # rescheduled: the new trigger's next time from now, on the epoch grid
    assert scheduler.apply(only(every="7s")) == Changes(reschedule=("heartbeat",))
    fire = scheduler.next_fire_times()["heartbeat"]
    assert fire is not None and (fire - EPOCH) % timedelta(seconds=7) == timedelta(0)
    assert clock.at < fire <= clock.at + timedelta(seconds=7)

    # modified (grace, coalescing): the next time is kept
    clock.at += timedelta(seconds=1)
    modified = only(every="7s", misfire_grace="5s", coalesce=False)
    assert scheduler.apply(modified) == Changes(modify=("heartbeat",))
    assert scheduler.next_fire_times() == {"heartbeat": fire}

    # removed, then added back
    off = Settings(jobs={spec.name: {"enabled": False} for spec in REGISTRY})
    assert scheduler.apply(off) == Changes(remove=("heartbeat",))
    assert scheduler.next_fire_times() == {}
    assert scheduler.apply(only(cron="*/5 * * * *")) == Changes(add=("heartbeat",))
    assert scheduler.next_fire_times() == {"heartbeat": T + 5 * MINUTE}
    assert scheduler.held["heartbeat"].trigger == "cron '*/5 * * * *' UTC"


def test_a_modified_grace_applies_to_the_next_firing(
    scheduler: Scheduler, calls: Calls, clock: FixedClock
) -> None:
    scheduler.apply(only())
    scheduler.start()
    strict = only(misfire_grace="10s")
    assert scheduler.apply(strict) == Changes(modify=("heartbeat",))
    move(scheduler, clock, strict, T + timedelta(seconds=30))
    assert calls.missed.get(timeout=WAIT) == ("heartbeat", T, "fired 30.0s late")


def test_the_daemons_own_calls(scheduler: Scheduler, clock: FixedClock) -> None:
    ran: queue.SimpleQueue[tuple[str, datetime]] = queue.SimpleQueue()
    scheduler.call("once", lambda: ran.put(("once", clock.at)))
    scheduler.call("hourly", lambda: ran.put(("hourly", clock.at)), every=timedelta(hours=1))
    with pytest.raises(ValueError, match="scheduled already"):
        scheduler.call("once", lambda: None)
    with pytest.raises(ValueError, match="scheduled already"):
        scheduler.call("heartbeat", lambda: None)  # a job's name
    scheduler.apply(only())
    start = clock.at
    scheduler.start()
    assert {ran.get(timeout=WAIT), ran.get(timeout=WAIT)} == {("once", start), ("hourly", start)}
    settle(scheduler)
    assert scheduler.next_fire_times() == {"heartbeat": T}  # the calls are not jobs
    move(scheduler, clock, only(), start + timedelta(hours=5))  # late: runs, once
    assert ran.get(timeout=WAIT) == ("hourly", start + timedelta(hours=5))
    settle(scheduler)
    assert ran.empty()
    scheduler.call("later", lambda: ran.put(("later", clock.at)))  # started: at once
    assert ran.get(timeout=WAIT) == ("later", start + timedelta(hours=5))


def test_stopped_fires_nothing(scheduler: Scheduler, calls: Calls, clock: FixedClock) -> None:
    settings = only()
    scheduler.apply(settings)
    scheduler.start()
    scheduler.stop()
    assert not scheduler.healthy()
    clock.at = T + 10 * MINUTE
    scheduler.apply(settings)
    with pytest.raises(queue.Empty):
        calls.ticks.get(timeout=1.5)
    assert nothing_in(calls.missed)
