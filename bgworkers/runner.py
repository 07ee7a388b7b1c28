"""One tick of one job: fan out over tenants, each run claimed, leased, isolated, recorded."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger

from bgworkers import alerts, history
from bgworkers.clock import Clock, SystemClock
from bgworkers.db import error_line
from bgworkers.jobs import BY_NAME
from bgworkers.jobs.base import Counters, JobContext, JobSpec, LeaseLost
from bgworkers.leases import Lease, Leases
from bgworkers.logs import get_logger, log_context
from bgworkers.metrics import Metrics
from bgworkers.settings import Settings
from bgworkers.tenancy import Databases, Tenant, discover

log = get_logger("bgworkers.runner")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {error_line(exc)}"


@dataclass
class TenantResult:
    status: str  # ok, failed, skipped (lease held elsewhere), claimed (tick run elsewhere)
    counters: Counters = field(default_factory=dict)
    error: str | None = None
    alerts: list[alerts.Alert] = field(default_factory=list)


@dataclass
class TickResult:
    job: str
    tick_at: datetime
    tenants: dict[str, TenantResult] = field(default_factory=dict)
    error: str | None = None  # the tick itself failed (e.g. tenants could not be listed)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.status == "failed" for r in self.tenants.values())

    def total(self, counter_names: tuple[str, ...]) -> Counters:
        total: Counter[str] = Counter({name: 0 for name in counter_names})
        for result in self.tenants.values():
            total.update(result.counters)
            if result.status in ("ok", "failed"):
                total["tenants"] += 1
            if result.status == "failed":
                total["errors"] += 1
            if result.status == "skipped":
                total["skipped"] += 1
        return dict(total)

    def as_json(self, counter_names: tuple[str, ...]) -> dict[str, Any]:
        return {
            "job": self.job,
            "tenants": {code: r.counters | ({"skipped": 1} if r.status == "skipped" else {})
                        for code, r in self.tenants.items()},
            "total": self.total(counter_names),
        }


class Runner:
    """Runs ticks; shared by the daemon (many ticks) and run-once (one tick)."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.settings = settings
        self.dbs = Databases(settings)
        self.leases = Leases(lambda: self.dbs.coordination, f"{self.host}:{self.pid}",
                             settings.scheduler.lease_ttl.total_seconds())
        self.workers = settings.scheduler.max_workers
        self.pool = ThreadPoolExecutor(self.workers, "tenant")
        self.stopping = threading.Event()
        self.metrics: Metrics | None = None  # the daemon's; run-once has none
        self.last_error: str | None = None
        self._inflight: set[Future[TenantResult]] = set()
        self._lock = threading.Lock()

    def update(self, settings: Settings) -> None:
        """New settings after a reload: new engines, TTL and pool size for later runs."""
        old_dbs, old_pool = self.dbs, self.pool
        self.settings = settings
        self.dbs = Databases(settings)
        self.leases.ttl = settings.scheduler.lease_ttl.total_seconds()
        if settings.scheduler.max_workers != self.workers:
            self.workers = settings.scheduler.max_workers
            self.pool = ThreadPoolExecutor(self.workers, "tenant")
            old_pool.shutdown(wait=False)
        old_dbs.dispose()  # connections still checked out close when returned

    def tick(self, job: str, tick_at: datetime, *, only: str | None = None,
             dry_run: bool = False) -> TickResult:
        """Run `job` for every active tenant (or `only`); never raises."""
        spec = BY_NAME[job]
        result = TickResult(job, tick_at)
        started = time.monotonic()
        settings, dbs = self.settings, self.dbs
        try:
            tenants, problems = discover(settings, dbs.core)
        except SQLAlchemyError as exc:
            result.error = f"cannot list tenants from the core database: {_short(exc)}"
            self.last_error = result.error
            log.error("tenant_discovery_failed", job=job, error=result.error)
            return result
        for problem in problems:
            if only in (None, problem.code):
                result.tenants[problem.code] = TenantResult("failed", {}, problem.error)
                log.error("tenant_refused", job=job, tenant=problem.code, error=problem.error)
        if only is not None:
            tenants = [t for t in tenants if t.code == only]
            if not tenants and only not in result.tenants:
                result.error = f"tenant {only!r} is not an active tenant"
                return result
        futures = {t.code: self._submit(spec, t, tick_at, dry_run, settings, dbs)
                   for t in tenants}
        for code, future in futures.items():
            result.tenants[code] = future.result()
        statuses = Counter(r.status for r in result.tenants.values())
        total = result.total(spec.counters)
        worst = "warning" if result.failed else alerts.level(
            a for r in result.tenants.values() for a in r.alerts)
        log.log(alerts.LEVELS[worst], "job_run_summary",
                job=job, tick=tick_at.isoformat(), ms=int((time.monotonic() - started) * 1000),
                **{f"tenants_{k}": v for k, v in statuses.items()}, **total)
        return result

    def _submit(self, spec: JobSpec, tenant: Tenant, tick_at: datetime, dry_run: bool,
                settings: Settings, dbs: Databases) -> Future[TenantResult]:
        future = self.pool.submit(self._run_tenant, spec, tenant, tick_at, dry_run, settings, dbs)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[TenantResult]) -> None:
        with self._lock:
            self._inflight.discard(future)

    def _run_tenant(self, spec: JobSpec, tenant: Tenant, tick_at: datetime, dry_run: bool,
                    settings: Settings, dbs: Databases) -> TenantResult:
        if self.stopping.is_set():
            return TenantResult("skipped", error="shutting down")
        run_id = str(uuid.uuid4())
        with log_context(job=spec.name, tenant=tenant.code, run_id=run_id):
            tenant_log = get_logger("bgworkers.job")
            lease = self._start(spec, tenant.code, tick_at, run_id, dbs, tenant_log)
            if isinstance(lease, TenantResult):
                if lease.status != "claimed":
                    self._measure(spec.name, tenant.code, lease, None)
                return lease
            started = time.monotonic()
            dry_run = dry_run or bool(getattr(settings.jobs.get(spec.name), "dry_run", False))
            ctx = JobContext(job=spec.name, tenant=tenant, settings=settings, dbs=dbs,
                             clock=self.clock, log=tenant_log, dry_run=dry_run, guard=lease)
            try:
                result = self._execute(spec, ctx)
                self._finish(dbs.coordination, run_id, result.status, result.counters,
                             result.error)
            finally:  # after the history row is closed: its interval lies inside the lease
                self.leases.release(lease)
            self._measure(spec.name, tenant.code, result, time.monotonic() - started)
            return result

    def _measure(self, job: str, tenant: str, result: TenantResult,
                 seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.run_finished(job, tenant, result.status, seconds, self.clock.now(),
                                      [a.event for a in result.alerts])

    def _start(self, spec: JobSpec, tenant: str, tick_at: datetime, run_id: str,
               dbs: Databases, tenant_log: FilteringBoundLogger) -> Lease | TenantResult:
        """Claim the tick and take the lease; a TenantResult when the run must not go on."""
        coordination = dbs.coordination
        lease = None
        try:
            if not history.claim(coordination, spec.name, tenant,
                                 tick_at.astimezone(UTC).replace(tzinfo=None), run_id,
                                 self.host, self.pid):
                tenant_log.debug("tick_claimed_elsewhere", tick=tick_at.isoformat())
                return TenantResult("claimed")
            lease = self.leases.acquire(spec.lease_group, tenant, run_id)
            if lease is None:
                tenant_log.info("lease_busy", lease_group=spec.lease_group)
                history.finish(coordination, run_id, "skipped", None, "lease held by another run")
                return TenantResult("skipped", error="lease held by another run")
            if lease.previous is not None:
                history.mark_abandoned(coordination, lease.previous, self.leases.holder)
            history.started(coordination, run_id)
        except SQLAlchemyError as exc:
            if lease is not None:
                self.leases.release(lease)
            error = f"coordination database: {_short(exc)}"
            tenant_log.error("run_not_started", error=error)
            self.last_error = error
            return TenantResult("failed", error=error)
        return lease

    def _execute(self, spec: JobSpec, ctx: JobContext) -> TenantResult:
        """Run the job for one tenant; its exception is logged and recorded, never raised."""
        started = time.monotonic()
        try:
            result = TenantResult("ok", dict(spec.run(ctx)))
        except LeaseLost as exc:
            result = TenantResult("failed", error=f"lease lost: {exc}")
            ctx.log.error("run_lease_lost", error=result.error)
        except Exception as exc:  # one tenant never hurts another
            result = TenantResult("failed", error=traceback.format_exc())
            ctx.log.exception("run_failed", error=_short(exc))
            self.last_error = f"{spec.name}/{ctx.tenant.code}: {_short(exc)}"
        if result.status == "ok":
            result.alerts = alerts.check(spec.name, result.counters, ctx.settings.alerts)
            ctx.log.log(alerts.LEVELS[alerts.level(result.alerts)], "job_tenant_result",
                        status=result.status, ms=int((time.monotonic() - started) * 1000),
                        dry_run=ctx.dry_run, **result.counters)
            for alert in result.alerts:
                ctx.log.log(alerts.LEVELS[alert.level], alert.event, counter=alert.counter,
                            value=alert.value, threshold=alert.threshold)
        return result

    def _finish(self, engine: Any, run_id: str, status: str, counters: Counters | None,
                error: str | None) -> None:
        try:
            history.finish(engine, run_id, status, counters, error)
        except SQLAlchemyError as exc:
            log.error("history_write_failed", run_id=run_id, error=_short(exc))

    def record_missed(self, job: str, tick_at: datetime, reason: str) -> None:
        """Record a tick that did not run here for every tenant (a no-op where one ran it)."""
        try:
            tenants, _ = discover(self.settings, self.dbs.core)
            for tenant in tenants:
                history.record_missed(self.dbs.coordination, job, tenant.code,
                                      tick_at.astimezone(UTC).replace(tzinfo=None),
                                      str(uuid.uuid4()), self.host, self.pid, reason)
        except SQLAlchemyError as exc:
            log.error("history_write_failed", job=job, error=_short(exc))
        log.warning("tick_missed", job=job, tick=tick_at.isoformat(), reason=reason)
        if self.metrics is not None:
            self.metrics.missed.labels(job).inc()

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def drain(self, timeout: float, poll: Any = None) -> bool:
        """Stop starting tenant runs; wait for running ones. True when all finished in time."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._inflight)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait(pending, timeout=min(left, 0.2))
            if poll is not None:
                poll()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.leases.stop()
        self.dbs.dispose()

