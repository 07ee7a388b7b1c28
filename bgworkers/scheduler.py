"""Settings -> APScheduler triggers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from bgworkers.cron import cron_trigger
from bgworkers.settings import JobSettings, SchedulerSettings, format_duration

#: Intervals count from the epoch, so a 5-minute job fires at :00, :05, ... UTC on every
#: replica, and replicas agree on the identity (scheduled time) of each tick.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_trigger(job: JobSettings, scheduler: SchedulerSettings) -> Any:
    jitter = int(job.jitter.total_seconds()) or None
    if job.cron is not None:
        return cron_trigger(job.cron, scheduler.timezone, jitter)
    assert job.every is not None
    return IntervalTrigger(seconds=int(job.every.total_seconds()), start_date=EPOCH,
                           timezone=UTC, jitter=jitter)


def describe_trigger(job: JobSettings) -> str:
    if job.cron is not None:
        return f"cron {job.cron!r}"
    assert job.every is not None
    return f"every {format_duration(job.every)}"


def next_fire(job: JobSettings, scheduler: SchedulerSettings, now: datetime) -> datetime | None:
    trigger = make_trigger(job, scheduler)
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire
