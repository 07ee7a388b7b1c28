"""What a job is: a spec (data) and `run(ctx) -> counters` for one tenant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Engine, Table
from structlog.typing import FilteringBoundLogger

from bgworkers import limits
from bgworkers.clock import Clock
from bgworkers.settings import JobSettings, Settings
from bgworkers.tenancy import Databases, Tenant

Counters = dict[str, int]


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
class JobSpec:
    name: str
    lease_group: str
    description: str
    counters: tuple[str, ...]
    run: Callable[[JobContext], Counters]
    #: tenant and core tables the job reads and writes: checked when a run fails,
    #: so a missing table or column is named with the command that adds it
    tables: tuple[Table, ...] = ()


@dataclass
class JobContext:
    """Everything one (job, tenant) run may use; time comes from `now`, never the system."""

    job: str
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
    def job_settings(self) -> JobSettings:
        return self.settings.jobs.get(self.job)

    @property
    def now(self) -> datetime:
        """Aware UTC."""
        return self.clock.now()

    @property
    def erp_now(self) -> datetime:
        """Naive local time of the ERP, as its non-serial tables store it."""
        return self.now.astimezone(self.settings.erp.tz).replace(tzinfo=None)

    @property
    def utc_now(self) -> datetime:
        """Naive UTC, as the serial tables store it."""
        return self.now.astimezone(UTC).replace(tzinfo=None)

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
