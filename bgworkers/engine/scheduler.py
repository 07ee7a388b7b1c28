"""Settings -> triggers; what fires when; the scheduler thread, reconciled in place on
reload."""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from apscheduler.triggers.interval import IntervalTrigger

from bgworkers.engine.clock import Clock
from bgworkers.engine.logs import get_logger
from bgworkers.settings import JobSettings, SchedulerSettings, Settings, format_duration
from bgworkers.settings.cron import cron_trigger
from bgworkers.settings.jobs import JobsSettings

#: Intervals count from the epoch, so a 5-minute job fires at :00, :05, ... UTC on every
#: replica, and replicas agree on the identity (scheduled time) of each tick.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

log = get_logger("bgworkers.scheduler")


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """The settings sections that differ (every section of the model, in its order)."""
    return [name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)]


def make_trigger(job: JobSettings, scheduler: SchedulerSettings, jitter: bool = True) -> Any:
    seconds = int(job.jitter.total_seconds()) if jitter else 0
    if job.cron is not None:
        return cron_trigger(job.cron, scheduler.timezone, seconds or None)
    assert job.every is not None
    return IntervalTrigger(
        seconds=int(job.every.total_seconds()),
        start_date=EPOCH,
        timezone=UTC,
        jitter=seconds or None,
    )


def describe_trigger(job: JobSettings, scheduler: SchedulerSettings | None = None) -> str:
    if job.cron is not None:
        zone = f" {scheduler.timezone}" if scheduler else ""
        return f"cron {job.cron!r}{zone}"
    assert job.every is not None
    return f"every {format_duration(job.every)}"


def next_fire(job: JobSettings, scheduler: SchedulerSettings, now: datetime) -> datetime | None:
    fire: datetime | None = make_trigger(job, scheduler).get_next_fire_time(None, now)
    return fire


def previous_fire(job: JobSettings, scheduler: SchedulerSettings, now: datetime) -> datetime | None:
    """The latest un-jittered scheduled time at or before `now`."""
    if job.every is not None:
        return EPOCH + ((now - EPOCH) // job.every) * job.every
    trigger = make_trigger(job, scheduler, jitter=False)
    first = trigger.get_next_fire_time(None, now)
    if first is None:
        return None
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1))
    lookback = 2 * (second - first) if second is not None else timedelta(days=1)
    while lookback <= timedelta(days=800):  # gaps vary (weekdays, months): widen until found
        fire = trigger.get_next_fire_time(None, now - lookback)
        last = None
        while fire is not None and fire <= now:
            last = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        if last is not None:
            return cast(datetime, last)
        lookback *= 2
    return None


def tick_identity(job: JobSettings, scheduler: SchedulerSettings, run_time: datetime) -> datetime:
    """The un-jittered scheduled time of a firing: the same on every replica."""
    if not job.jitter:
        return run_time
    base = make_trigger(job, scheduler, jitter=False)
    fire: datetime = base.get_next_fire_time(None, run_time - job.jitter)
    return fire


# ------------------------------------------------------------------ reconcile


@dataclass(frozen=True)
class Plan:
    """What the scheduler must hold for one job; equal plans need no change."""

    trigger: str
    jitter: float
    misfire_grace: float
    coalesce: bool


def plans(settings: Settings) -> dict[str, Plan]:
    out = {}
    for name in settings.jobs.names():
        job = settings.jobs.get(name)
        if job.enabled:
            grace = job.misfire_grace or settings.scheduler.misfire_grace
            out[name] = Plan(
                describe_trigger(job, settings.scheduler),
                job.jitter.total_seconds(),
                grace.total_seconds(),
                job.coalesce,
            )
    return out


@dataclass(frozen=True)
class Changes:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    reschedule: tuple[str, ...] = ()  # trigger or jitter changed
    modify: tuple[str, ...] = ()  # misfire grace or coalescing changed

    def __bool__(self) -> bool:
        return bool(self.add or self.remove or self.reschedule or self.modify)

    def describe(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in vars(self).items() if v}


def reconcile(old: Mapping[str, Plan], new: Mapping[str, Plan]) -> Changes:
    """What turns the scheduler holding `old` into one holding `new` (pure)."""
    both = sorted(old.keys() & new.keys())
    reschedule = tuple(
        n for n in both if (old[n].trigger, old[n].jitter) != (new[n].trigger, new[n].jitter)
    )
    modify = tuple(n for n in both if n not in reschedule and old[n] != new[n])
    return Changes(
        add=tuple(sorted(new.keys() - old.keys())),
        remove=tuple(sorted(old.keys() - new.keys())),
        reschedule=reschedule,
        modify=modify,
    )


# ------------------------------------------------------------------ what fires now

#: Why a firing of a job did not run while its previous tick was still being handed out.
STILL_RUNNING = "previous tick still running"


class Trigger(Protocol):
    """What the scheduler needs of a trigger (APScheduler 3's trigger objects have it)."""

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None: ...


@dataclass(frozen=True)
class Timing:
    """How one scheduled entry fires: its trigger (without jitter), how late a firing may
    still run (None: however late), whether several overdue firings run once, and the
    jitter: each fire time is its tick plus a random delay up to that."""

    trigger: Trigger
    misfire_grace: timedelta | None
    coalesce: bool = True
    jitter: timedelta = timedelta(0)

    def first(self, now: datetime) -> datetime | None:
        """The first fire time from `now`."""
        return self._jittered(self.trigger.get_next_fire_time(None, now))

    def after(self, fire: datetime, now: datetime) -> datetime | None:
        """The fire time that follows `fire`: counted from its tick, so that jitter never
        adds up from one firing to the next."""
        return self._jittered(self.trigger.get_next_fire_time(self.tick(fire), now))

    def tick(self, fire: datetime) -> datetime:
        """The un-jittered scheduled time of a fire time (as `tick_identity`)."""
        if not self.jitter:
            return fire
        tick: datetime | None = self.trigger.get_next_fire_time(None, fire - self.jitter)
        return fire if tick is None else tick

    def _jittered(self, tick: datetime | None) -> datetime | None:
        if tick is None or not self.jitter:
            return tick
        return tick + timedelta(seconds=random.uniform(0, self.jitter.total_seconds()))


@dataclass(frozen=True)
class Firing:
    """A firing of an entry at its scheduled time; `missed` says why it does not run."""

    name: str
    run_time: datetime
    missed: str | None = None


@dataclass(frozen=True)
class Due:
    firings: tuple[Firing, ...]
    #: Every entry's next fire time once these firings are handled (None: never again).
    next_runs: dict[str, datetime | None]

    def wake_at(self) -> datetime | None:
        return min((at for at in self.next_runs.values() if at is not None), default=None)


def job_timing(job: JobSettings, scheduler: SchedulerSettings) -> Timing:
    """How a job fires, from its settings."""
    return Timing(
        make_trigger(job, scheduler, jitter=False),
        job.misfire_grace or scheduler.misfire_grace,
        job.coalesce,
        job.jitter,
    )


def lateness(run_time: datetime, grace: timedelta | None, now: datetime) -> str | None:
    """Why a firing at `run_time` is too late to run at `now`; None while it may run."""
    late = now - run_time
    if grace is not None and late > grace:
        return f"fired {late.total_seconds():.1f}s late"
    return None


def due(
    timings: Mapping[str, Timing],
    next_runs: Mapping[str, datetime | None],
    now: datetime,
    running: Collection[str] = (),
) -> Due:
    """What fires at `now` (pure but for the jitter drawn for the next fire times).

    `next_runs` holds each entry's next fire time, `running` the entries whose previous
    firing is still being handled.  Every fire time up to `now` fires; with `coalesce`
    only the last of them.  A firing is missed when its entry is still running, or when
    it is later than the misfire grace.  The next fire time follows the last firing.
    """
    firings: list[Firing] = []
    following = {name: next_runs.get(name) for name in timings}
    for name, timing in timings.items():
        fire, run_times = next_runs.get(name), []
        while fire is not None and fire <= now:
            run_times.append(fire)
            fire = timing.after(fire, now)
        if not run_times:
            continue
        if timing.coalesce:
            run_times = run_times[-1:]
        for run_time in run_times:
            why = (
                STILL_RUNNING if name in running else lateness(run_time, timing.misfire_grace, now)
            )
            firings.append(Firing(name, run_time, why))
        following[name] = fire
    return Due(tuple(firings), following)


# ------------------------------------------------------------------ the scheduler thread

Tick = Callable[[str, datetime], None]
Missed = Callable[[str, datetime, str], None]

#: The longest the scheduler sleeps without looking at the clock again, so that a stepped
#: wall clock (or a test's clock) is followed within a second.
LOOK_EVERY = 1.0


@dataclass(frozen=True)
class _Every:
    """A trigger firing at once, then every `interval` after (None: only once)."""

    interval: timedelta | None

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is None:
            return now
        return previous_fire_time + self.interval if self.interval else None


@dataclass(frozen=True)
class _Entry:
    timing: Timing
    lane: ThreadPoolExecutor
    run: Callable[[datetime], None]
    missed: Callable[[datetime, str], None]
    names: dict[str, str]  # what its log events name it by


class Scheduler:
    """One entry per enabled job, fired on the clock by a thread of its own.

    Ticks are handed to `on_tick(job, scheduled time)` on a small pool, one at a time per
    job: a firing while the job's previous tick is still being handed out goes to
    `on_missed(job, scheduled time, "previous tick still running")`, as does a firing
    later than the job's misfire grace ("fired N s late").  The daemon's own calls
    (`call`) run one after another on a thread of their own.
    """

    def __init__(
        self,
        on_tick: Tick,
        on_missed: Missed,
        clock: Clock,
        workers: int = len(JobsSettings.names()) + 1,
    ) -> None:
        self.on_tick, self.on_missed, self.clock = on_tick, on_missed, clock
        self.held: dict[str, Plan] = {}
        self._entries: dict[str, _Entry] = {}
        self._next: dict[str, datetime | None] = {}
        self._running: set[str] = set()
        self._wake = threading.Condition()
        self._started = self._stopped = False
        self._thread: threading.Thread | None = None
        self._ticks = ThreadPoolExecutor(workers, "tick")
        self._calls = ThreadPoolExecutor(1, "call")

    # -------------------------------------------------------------- what it holds

    def apply(self, settings: Settings) -> Changes:
        """Bring the scheduler in line with `settings`; returns what changed.  An added or
        rescheduled job fires next at its trigger's next time from now; a modified one
        keeps its next fire time."""
        wanted = plans(settings)
        changes = reconcile(self.held, wanted)
        with self._wake:
            now = self.clock.now()
            for name in changes.remove:
                del self._entries[name]
                self._next.pop(name, None)
            for name in (*changes.add, *changes.reschedule, *changes.modify):
                self._entries[name] = self._job(name, settings)
            for name in (*changes.add, *changes.reschedule):
                self._next[name] = self._first(name, now)
            self.held = wanted
            self._wake.notify()
        return changes

    def _job(self, name: str, settings: Settings) -> _Entry:
        timing = job_timing(settings.jobs.get(name), settings.scheduler)
        return _Entry(
            timing,
            self._ticks,
            functools.partial(self.on_tick, name),
            functools.partial(self.on_missed, name),
            {"job": name},
        )

    def call(self, name: str, fn: Callable[[], None], every: timedelta | None = None) -> None:
        """Run `fn` when the scheduler starts (now, if it runs), then every `every` (None:
        only once), on the one thread of such calls.  A call never misses for being late;
        one still queued or running when it fires again skips that firing."""
        with self._wake:
            if name in self._entries or name in JobsSettings.names():
                raise ValueError(f"{name!r} is scheduled already")

            def skipped(run_time: datetime, _why: str) -> None:  # calls are never late
                log.warning(
                    "call_skipped",
                    call=name,
                    run_time=run_time.isoformat(),
                    reason="previous call still running",
                )

            self._entries[name] = _Entry(
                Timing(_Every(every), None),
                self._calls,
                lambda _run_time: fn(),
                skipped,
                {"call": name},
            )
            self._next[name] = self._first(name, self.clock.now())
            self._wake.notify()

    def _first(self, name: str, now: datetime) -> datetime | None:
        """An entry's first fire time: from now once started; set at start before."""
        if not self._started:
            return None
        return self._entries[name].timing.first(now)

    def next_fire_times(self) -> dict[str, datetime | None]:
        """Each job's next fire time (None: not before it is started)."""
        with self._wake:
            return {name: self._next.get(name) for name in self.held}

    # -------------------------------------------------------------- the thread

    def start(self) -> None:
        with self._wake:
            self._started = True
            now = self.clock.now()
            for name in self._entries:
                self._next[name] = self._first(name, now)
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Fire nothing more; what was handed out goes on (the runner drains it)."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for lane in (self._ticks, self._calls):
            lane.shutdown(wait=False)

    def healthy(self) -> bool:
        """The scheduler thread is alive and firing."""
        return bool(self._thread is not None and self._thread.is_alive() and not self._stopped)

    def _loop(self) -> None:
        try:
            with self._wake:
                while not self._stopped:
                    now = self.clock.now()
                    timings = {name: entry.timing for name, entry in self._entries.items()}
                    result = due(timings, self._next, now, self._running)
                    self._next = result.next_runs
                    self._hand_out(result.firings)
                    wake = result.wake_at()
                    left = LOOK_EVERY if wake is None else (wake - now).total_seconds()
                    self._wake.wait(min(max(left, 0.0), LOOK_EVERY))
        except BaseException:
            log.exception("scheduler_failed")  # healthy() says so: the watchdog stops
            raise

    def _hand_out(self, firings: Collection[Firing]) -> None:
        """Each entry's firings, in order, to its lane; called with the lock held."""
        batches: dict[str, list[Firing]] = {}
        for firing in firings:
            batches.setdefault(firing.name, []).append(firing)
        for name, batch in batches.items():
            entry = self._entries[name]
            if name in self._running:  # every firing of the batch is missed
                entry.lane.submit(self._handle, name, entry, batch, False)
            else:
                self._running.add(name)
                entry.lane.submit(self._handle, name, entry, batch, True)

    def _handle(self, name: str, entry: _Entry, batch: list[Firing], owns: bool) -> None:
        """Run or record each firing; a firing that waited past its grace is missed."""
        try:
            for firing in batch:
                why = firing.missed or lateness(
                    firing.run_time, entry.timing.misfire_grace, self.clock.now()
                )
                try:
                    if why is None:
                        entry.run(firing.run_time)
                    else:
                        entry.missed(firing.run_time, why)
                except Exception as exc:
                    log.exception(
                        "scheduled_firing_failed",
                        **entry.names,
                        run_time=firing.run_time.isoformat(),
                        error=f"{type(exc).__name__}: {exc}",
                    )
        finally:
            if owns:
                with self._wake:
                    self._running.discard(name)
