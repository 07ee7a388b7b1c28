"""What a job is: a spec (data) and `run(ctx) -> counters` for one tenant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from sqlalchemy import Engine, Table
from structlog.typing import FilteringBoundLogger

from bgworkers.db import limits
from bgworkers.engine.alerts import EVERY_JOB, Rule
from bgworkers.engine.clock import Clock, naive_local, naive_utc
from bgworkers.engine.tenancy import Databases, Tenant
from bgworkers.settings import JobSettings, Settings

Counters = dict[str, int]
#: The type of a job's [jobs.NAME] table.
S = TypeVar("S", bound=JobSettings)


class LeaseLost(Exception):
    """The run's lease expired or was taken over: stop before the next write."""


class Guard(Protocol):
    def check(self) -> None:
        """Raise LeaseLost if the lease of this run is no longer held."""


class NoGuard:
    """For direct calls outside the runner (tests, benchmarks): nothing to lose."""

    def check(self) -> None:
        return None


@dataclass(frozen=True)
class JobSpec(Generic[S]):
    """Everything about one job, declared once.

    Its name is its scheduler entry, its `[jobs.NAME]` table (of type `settings`),
    its log key (`job=`) and, unless it shares one, its lease group.
    """

    name: str
    settings: type[S]
    description: str
    #: What `run` counts, in the order they are shown (the runner adds `tenants`).
    counters: tuple[str, ...]
    run: Callable[[JobContext[S]], Counters]
    #: Jobs of one lease group never run at once for a tenant; "" is the job's own.
    lease_group: str = ""
    #: tenant and core tables the job reads and writes: checked when a run fails,
    #: so a missing table or column is named with the command that adds it
    tables: tuple[Table, ...] = ()
    #: Its own alert rules over its counters (every job also has `alerts.EVERY_JOB`).
    alerts: tuple[Rule, ...] = ()
    #: Alert events logged for it outside its runs (the minute watch).
    watch_alerts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.lease_group:
            object.__setattr__(self, "lease_group", self.name)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The alert rules checked after each of its tenant runs."""
        return (*self.alerts, *EVERY_JOB)

    @property
    def alert_events(self) -> tuple[str, ...]:
        """Every alert event that can be logged (and counted) for this job."""
        return (*(rule.event for rule in self.rules), *self.watch_alerts)

    def settings_in(self, settings: Settings) -> S:
        """This job's `[jobs.NAME]` table."""
        table = settings.jobs.get(self.name)
        if not isinstance(table, self.settings):
            raise TypeError(
                f"jobs.{self.name} is a {type(table).__name__}, not a {self.settings.__name__}"
            )
        return table

    def context(
        self,
        settings: Settings,
        tenant: Tenant,
        dbs: Databases,
        clock: Clock,
        log: FilteringBoundLogger,
        dry_run: bool = False,
    ) -> JobContext[S]:
        """A context for one run of this job for `tenant`."""
        return JobContext(
            job=self.name,
            job_settings=self.settings_in(settings),
            tenant=tenant,
            settings=settings,
            dbs=dbs,
            clock=clock,
            log=log,
            dry_run=dry_run,
        )


@dataclass
class JobContext(Generic[S]):
    """Everything one (job, tenant) run may use; time comes from `now`, never the system."""

    job: str
    #: The job's own `[jobs.NAME]` table, of the type its spec declares.
    job_settings: S
    tenant: Tenant
    settings: Settings
    dbs: Databases
    clock: Clock
    log: FilteringBoundLogger
    dry_run: bool = False
    guard: Guard = field(default_factory=NoGuard)
    #: Parts of the work that failed while the run went on (the run is then `partial`).
    problems: list[str] = field(default_factory=list)

    def part_failed(self, part: str, error: str) -> None:
        """Record that one part of the run's work failed; the rest goes on."""
        self.problems.append(f"{part}: {error}")

    @property
    def now(self) -> datetime:
        """Aware UTC."""
        return self.clock.now()

    @property
    def erp_now(self) -> datetime:
        """Naive local time of the ERP, as its non-serial tables store it."""
        return naive_local(self.now, self.settings.erp.tz)

    @property
    def utc_now(self) -> datetime:
        """Naive UTC, as the serial tables store it."""
        return naive_utc(self.now)

    @property
    def core(self) -> Engine:
        return self.dbs.core

    @property
    def db(self) -> Engine:
        """This tenant's database."""
        return self.dbs.tenant(self.tenant.code)

    def check_lease(self) -> None:
        """Raise LeaseLost if the lease is gone, RunTimedOut if the run is past its limit."""
        self.guard.check()
        limits.check()
