"""One tick of one job: fan out over tenants, each run claimed, leased, isolated, recorded."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger

from bgworkers import alerts, history, limits
from bgworkers.clock import Clock, SystemClock
from bgworkers.db import error_line
from bgworkers.jobs import BY_NAME
from bgworkers.jobs.base import Counters, JobContext, JobSpec, LeaseLost
from bgworkers.leases import Lease, Leases
from bgworkers.logs import get_logger, log_context
from bgworkers.metrics import Metrics
from bgworkers.settings import Settings
from bgworkers.tenancy import Databases, Tenant, TenantError, discover, resolve

log = get_logger("bgworkers.runner")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {error_line(exc)}"


def _databases(settings: Settings) -> Databases:
    """Engines whose client timeouts outlast the longest run limit (a last resort)."""
    longest = settings.jobs.longest_timeout().total_seconds()
    return Databases(settings, io_timeout=longest + BOOKKEEPING_LIMIT)


def _outcome(future: Future[TenantResult]) -> TenantResult:
    """A run's result; a run cancelled at shutdown before it started is skipped."""
    if future.cancelled():
        return TenantResult("skipped", error="shutting down")
    try:
        return future.result()
    except Exception as exc:  # a bug in the runner itself: still one tenant's failure
        log.exception("run_crashed", error=_short(exc))
        return TenantResult("failed", error=traceback.format_exc())


#: Limit of the daemon's own statements around runs: tenant discovery, tick
#: claims, leases, history.  Generous: they are single-row writes.
BOOKKEEPING_LIMIT = 30.0


@dataclass
class TenantResult:
    # ok, failed, skipped (lease held elsewhere), claimed (tick run elsewhere),
    # missed (this tenant's previous run of the job was still going)
    status: str
    counters: Counters = field(default_factory=dict)
    error: str | None = None
    alerts: list[alerts.Alert] = field(default_factory=list)
    timed_out: bool = False


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
            if result.status in ("skipped", "missed"):
                total[result.status] += 1
        return dict(total)

    def as_json(self, counter_names: tuple[str, ...]) -> dict[str, Any]:
        return {
            "job": self.job,
            "tenants": {code: r.counters | ({r.status: 1} if r.status in ("skipped", "missed")
                                            else {})
                        for code, r in self.tenants.items()},
            "total": self.total(counter_names),
        }


class Runner:
    """Runs ticks; shared by the daemon (many ticks) and run-once (one tick).

    Every (job, tenant) run is its own unit: a tick queues one run per tenant
    and a tenant whose previous run of the job is still going misses this tick
    alone.  A tenant whose last run timed out (a stuck database) runs in a
    one-worker slow lane until a run of it succeeds, so stuck tenants never
    hold the workers the others need.
    """

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.settings = settings
        self.dbs = _databases(settings)
        self.leases = Leases(lambda: self.dbs.coordination, f"{self.host}:{self.pid}",
                             settings.scheduler.lease_ttl.total_seconds())
        self.workers = settings.scheduler.max_workers
        self.pool = ThreadPoolExecutor(self.workers, "tenant")
        self.slow_lane = ThreadPoolExecutor(1, "tenant-slow")
        self.stalled: set[str] = set()  # tenants whose last run timed out
        self.stopping = threading.Event()
        self.metrics: Metrics | None = None  # the daemon's; run-once has none
        self.last_error: str | None = None
        self._running: dict[tuple[str, str], Future[TenantResult]] = {}
        self._lock = threading.Lock()

    def update(self, settings: Settings) -> None:
        """New settings after a reload: new engines, TTL and pool size for later runs."""
        old_dbs, old_pool = self.dbs, self.pool
        self.settings = settings
        self.dbs = _databases(settings)
        self.leases.ttl = settings.scheduler.lease_ttl.total_seconds()
        if settings.scheduler.max_workers != self.workers:
            self.workers = settings.scheduler.max_workers
            self.pool = ThreadPoolExecutor(self.workers, "tenant")
            old_pool.shutdown(wait=False)
        old_dbs.dispose()  # connections still checked out close when returned

    def tick(self, job: str, tick_at: datetime, *, only: str | None = None,
             dry_run: bool = False, wait: bool = True,
             on_done: Callable[[TickResult], None] | None = None) -> TickResult:
        """Run `job` for every active tenant (or `only`); never raises.

        wait=True (run-once): returns once every tenant run has ended.  wait=False
        (the daemon): returns once the runs are queued; `on_done` gets the result
        when the last of them ends.
        """
        spec = BY_NAME[job]
        result = TickResult(job, tick_at)
        started = time.monotonic()
        settings, dbs = self.settings, self.dbs
        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                tenants, problems = discover(settings, dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            result.error = f"cannot list tenants from the core database: {_short(exc)}"
            self.last_error = result.error
            log.error("tenant_discovery_failed", job=job, error=result.error)
            if on_done is not None:
                on_done(result)
            return result
        if only is not None:
            tenants = [t for t in tenants if t.code == only]
            problems = [p for p in problems if p.code == only]
            if not tenants and not problems:
                result.error = self._why_not(only)
                if on_done is not None:
                    on_done(result)
                return result
        for problem in problems:
            result.tenants[problem.code] = TenantResult("failed", {}, problem.error)
            log.error("tenant_refused", job=job, tenant=problem.code, error=problem.error)
        futures: dict[str, Future[TenantResult]] = {}
        for tenant in tenants:
            future = self._submit(spec, tenant, tick_at, dry_run, settings, dbs)
            if future is None:
                result.tenants[tenant.code] = self._tenant_missed(
                    job, tenant.code, tick_at, "previous run of this tenant still running")
            else:
                futures[tenant.code] = future

        def finished() -> None:
            self._summarize(spec, result, started)
            if on_done is not None:
                on_done(result)

        if wait:
            for code, future in futures.items():
                result.tenants[code] = _outcome(future)
            finished()
            return result
        left = [len(futures)]

        def one_done(code: str, future: Future[TenantResult]) -> None:
            with self._lock:
                result.tenants[code] = _outcome(future)
                left[0] -= 1
                last = left[0] == 0
            if last:
                finished()

        if not futures:
            finished()
        for code, future in futures.items():
            future.add_done_callback(functools.partial(one_done, code))
        return result

    def _why_not(self, code: str) -> str:
        """Why `code` is not a tenant to run (the operator's words for it may be a case variant)."""
        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                resolve(self.settings, self.dbs.core, code)
        except TenantError as exc:
            return str(exc)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            return f"cannot look up tenant {code!r} in the core database: {_short(exc)}"
        return f"tenant {code!r} is not an active tenant"

    def _summarize(self, spec: JobSpec, result: TickResult, started: float) -> None:
        statuses = Counter(r.status for r in result.tenants.values())
        total = result.total(spec.counters)
        worst = "warning" if result.failed else alerts.level(
            a for r in result.tenants.values() for a in r.alerts)
        log.log(alerts.LEVELS[worst], "job_run_summary",
                job=spec.name, tick=result.tick_at.isoformat(),
                ms=int((time.monotonic() - started) * 1000),
                **{f"tenants_{k}": v for k, v in statuses.items()}, **total)

    def _submit(self, spec: JobSpec, tenant: Tenant, tick_at: datetime, dry_run: bool,
                settings: Settings, dbs: Databases) -> Future[TenantResult] | None:
        """Queue the tenant's run; None when its previous run of this job is still going."""
        key = (spec.name, tenant.code)
        with self._lock:
            if key in self._running:
                return None
            lane = self.slow_lane if tenant.code in self.stalled else self.pool
            future = lane.submit(self._run_tenant, spec, tenant, tick_at, dry_run, settings, dbs)
            self._running[key] = future
        future.add_done_callback(functools.partial(self._done, key))
        return future

    def _done(self, key: tuple[str, str], future: Future[TenantResult]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    def _run_tenant(self, spec: JobSpec, tenant: Tenant, tick_at: datetime, dry_run: bool,
                    settings: Settings, dbs: Databases) -> TenantResult:
        if self.stopping.is_set():
            return TenantResult("skipped", error="shutting down")
        run_id = str(uuid.uuid4())
        with log_context(job=spec.name, tenant=tenant.code, run_id=run_id):
            tenant_log = get_logger("bgworkers.job")
            with limits.limited(BOOKKEEPING_LIMIT):
                lease = self._start(spec, tenant.code, tick_at, run_id, dbs, tenant_log)
            if isinstance(lease, TenantResult):
                if lease.status != "claimed":
                    self._measure(spec.name, tenant.code, lease, None)
                return lease
            started = time.monotonic()
            job_settings = settings.jobs.get(spec.name)
            dry_run = dry_run or bool(getattr(job_settings, "dry_run", False))
            ctx = JobContext(job=spec.name, tenant=tenant, settings=settings, dbs=dbs,
                             clock=self.clock, log=tenant_log, dry_run=dry_run, guard=lease)
            try:
                result = self._execute(spec, ctx, job_settings.run_limit.total_seconds())
                with limits.limited(BOOKKEEPING_LIMIT):
                    self._finish(dbs.coordination, run_id, result.status, result.counters,
                                 result.error)
            finally:  # after the history row is closed: its interval lies inside the lease
                with limits.limited(BOOKKEEPING_LIMIT):
                    self.leases.release(lease)
            with self._lock:
                if result.timed_out:
                    self.stalled.add(tenant.code)
                elif result.status == "ok":
                    self.stalled.discard(tenant.code)
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
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            if lease is not None:
                self.leases.release(lease)
            error = f"coordination database: {_short(exc)}"
            tenant_log.error("run_not_started", error=error)
            self.last_error = error
            return TenantResult("failed", error=error)
        return lease

    def _execute(self, spec: JobSpec, ctx: JobContext, limit_s: float) -> TenantResult:
        """Run the job for one tenant within its limit; errors are logged and recorded,
        never raised."""
        started = time.monotonic()
        with limits.limited(limit_s) as limit:
            try:
                result = TenantResult("ok", dict(spec.run(ctx)))
            except LeaseLost as exc:
                result = TenantResult("failed", error=f"lease lost: {exc}")
                ctx.log.error("run_lease_lost", error=result.error)
            except Exception as exc:  # one tenant never hurts another
                if limit.expired():
                    result = TenantResult("failed", error=limit.error(), timed_out=True)
                else:
                    result = TenantResult("failed", error=traceback.format_exc())
                    ctx.log.exception("run_failed", error=_short(exc))
                self.last_error = f"{spec.name}/{ctx.tenant.code}: {_short(exc)}"
            if limit.fired and not result.timed_out:  # the job went on after its cut
                result = TenantResult("failed", error=limit.error(), timed_out=True)
        if result.timed_out:
            self.last_error = f"{spec.name}/{ctx.tenant.code}: {result.error}"
            ctx.log.error("run_timed_out", error=result.error, limit_s=limit_s,
                          ms=int((time.monotonic() - started) * 1000))
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
            with limits.limited(BOOKKEEPING_LIMIT):
                tenants, _ = discover(self.settings, self.dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.error("history_write_failed", job=job, error=_short(exc))
            tenants = []
        for tenant in tenants:
            self._tenant_missed(job, tenant.code, tick_at, reason)
        log.warning("tick_missed", job=job, tick=tick_at.isoformat(), reason=reason,
                    tenants=len(tenants))

    def _tenant_missed(self, job: str, tenant: str, tick_at: datetime,
                       reason: str) -> TenantResult:
        """Record that this tenant's tick did not run here (a no-op where another ran it)."""
        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                history.record_missed(self.dbs.coordination, job, tenant,
                                      tick_at.astimezone(UTC).replace(tzinfo=None),
                                      str(uuid.uuid4()), self.host, self.pid, reason)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.error("history_write_failed", job=job, tenant=tenant, error=_short(exc))
        log.warning("tenant_tick_missed", job=job, tenant=tenant, tick=tick_at.isoformat(),
                    reason=reason)
        if self.metrics is not None:
            self.metrics.missed.labels(job).inc()
        return TenantResult("missed", error=reason)

    def inflight(self) -> int:
        with self._lock:
            return len(self._running)

    def running(self) -> list[tuple[str, str]]:
        """(job, tenant) of the runs queued or going."""
        with self._lock:
            return sorted(self._running)

    def drain(self, timeout: float, poll: Any = None) -> bool:
        """Stop starting tenant runs; wait for running ones. True when all finished in time."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._running.values())
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
        self.slow_lane.shutdown(wait=False, cancel_futures=True)
        self.leases.stop()
        self.dbs.dispose()

