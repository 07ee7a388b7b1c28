"""Settings -> APScheduler jobs, and reconciling them in place on reload."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bgworkers.engine.clock import Clock
from bgworkers.engine.cron import cron_trigger
from bgworkers.jobs import REGISTRY
from bgworkers.settings import JobSettings, SchedulerSettings, Settings, format_duration

#: Intervals count from the epoch, so a 5-minute job fires at :00, :05, ... UTC on every
#: replica, and replicas agree on the identity (scheduled time) of each tick.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def changed_sections(old: Settings, new: Settings) -> list[str]:
    """The settings sections that differ (every section of the model, in its order)."""
    return [name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)]


def make_trigger(job: JobSettings, scheduler: SchedulerSettings, jitter: bool = True) -> Any:
    seconds = int(job.jitter.total_seconds()) if jitter else 0
    if job.cron is not None:
        return cron_trigger(job.cron, scheduler.timezone, seconds or None)
    assert job.every is not None
    return IntervalTrigger(seconds=int(job.every.total_seconds()), start_date=EPOCH,
                           timezone=UTC, jitter=seconds or None)


def describe_trigger(job: JobSettings, scheduler: SchedulerSettings | None = None) -> str:
    if job.cron is not None:
        zone = f" {scheduler.timezone}" if scheduler else ""
        return f"cron {job.cron!r}{zone}"
    assert job.every is not None
    return f"every {format_duration(job.every)}"


def next_fire(job: JobSettings, scheduler: SchedulerSettings, now: datetime) -> datetime | None:
    fire: datetime | None = make_trigger(job, scheduler).get_next_fire_time(None, now)
    return fire


def previous_fire(job: JobSettings, scheduler: SchedulerSettings,
                  now: datetime) -> datetime | None:
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
    for spec in REGISTRY:
        job = settings.jobs.get(spec.name)
        if job.enabled:
            grace = job.misfire_grace or settings.scheduler.misfire_grace
            out[spec.name] = Plan(describe_trigger(job, settings.scheduler),
                                  job.jitter.total_seconds(), grace.total_seconds(),
                                  job.coalesce)
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
    reschedule = tuple(n for n in both if (old[n].trigger, old[n].jitter) !=
                       (new[n].trigger, new[n].jitter))
    modify = tuple(n for n in both if n not in reschedule and old[n] != new[n])
    return Changes(add=tuple(sorted(new.keys() - old.keys())),
                   remove=tuple(sorted(old.keys() - new.keys())),
                   reschedule=reschedule, modify=modify)


# ------------------------------------------------------------------ APScheduler glue

Tick = Callable[[str, datetime], None]
Missed = Callable[[str, datetime, str], None]


class TickExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """Calls on_tick(job, scheduled time) — APScheduler 3 does not pass the scheduled time
    to job functions, and a tick's identity is its scheduled time. Late firings beyond
    the job's misfire grace go to on_missed instead."""

    def __init__(self, on_tick: Tick, on_missed: Missed, clock: Clock, workers: int) -> None:
        super().__init__(max_workers=workers)
        self.on_tick, self.on_missed, self.clock = on_tick, on_missed, clock

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def done(future: Any) -> None:
            exc = future.exception()
            if exc is not None:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(self._work, job, run_times).add_done_callback(done)

    def _work(self, job: Any, run_times: list[datetime]) -> list[JobExecutionEvent]:
        events = []
        for run_time in run_times:
            late = self.clock.now() - run_time
            grace = job.misfire_grace_time
            if grace is not None and late > timedelta(seconds=grace):
                self.on_missed(job.id, run_time, f"fired {late.total_seconds():.1f}s late")
                events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, "default", run_time))
                continue
            try:
                self.on_tick(job.id, run_time)
            except Exception as exc:
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, "default", run_time,
                                                exception=exc, traceback=None))
            else:
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, "default", run_time))
        return events


@dataclass
class Scheduler:
    """The APScheduler scheduler with one job per plan."""

    on_tick: Tick
    on_missed: Missed
    clock: Clock
    held: dict[str, Plan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        executor = TickExecutor(self.on_tick, self.on_missed, self.clock, len(REGISTRY) + 1)
        self.aps = BackgroundScheduler(executors={"default": executor}, timezone=UTC)
        self.aps.add_listener(self._max_instances, EVENT_JOB_MAX_INSTANCES)

    def _max_instances(self, event: JobSubmissionEvent) -> None:
        for run_time in event.scheduled_run_times:
            self.on_missed(event.job_id, run_time, "previous tick still running")

    def apply(self, settings: Settings) -> Changes:
        """Bring the scheduler in line with `settings`; returns what changed."""
        wanted = plans(settings)
        changes = reconcile(self.held, wanted)
        for name in changes.remove:
            self.aps.remove_job(name)
        for name in changes.add:
            self.aps.add_job(self.on_tick_placeholder, trigger=self._trigger(settings, name),
                             id=name, name=name, max_instances=1,
                             misfire_grace_time=int(wanted[name].misfire_grace),
                             coalesce=wanted[name].coalesce, replace_existing=True)
        for name in changes.reschedule:
            self.aps.reschedule_job(name, trigger=self._trigger(settings, name))
        for name in (*changes.reschedule, *changes.modify):
            self.aps.modify_job(name, misfire_grace_time=int(wanted[name].misfire_grace),
                                coalesce=wanted[name].coalesce)
        self.held = wanted
        return changes

    @staticmethod
    def on_tick_placeholder() -> None:
        """Never called: TickExecutor calls on_tick with the job name and scheduled time."""

    @staticmethod
    def _trigger(settings: Settings, name: str) -> Any:
        return make_trigger(settings.jobs.get(name), settings.scheduler)

    def next_fire_times(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self.aps.get_jobs()}

    def healthy(self) -> bool:
        thread = getattr(self.aps, "_thread", None)
        return bool(self.aps.running and thread is not None and thread.is_alive())

