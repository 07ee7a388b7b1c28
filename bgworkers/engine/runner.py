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
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger

from bgworkers.db import error_line, limits
from bgworkers.engine import alerts, history, pauses
from bgworkers.engine.clock import Clock, SystemClock, naive_utc
from bgworkers.engine.history import FAILING, RunStatus
from bgworkers.engine.job import Counters, JobContext, JobSpec, LeaseLost, S
from bgworkers.engine.leases import Lease, Leases
from bgworkers.engine.logs import LEVELS, get_logger, log_context
from bgworkers.engine.tenancy import Databases, Tenant, TenantError, discover, resolve
from bgworkers.schema import core, needs
from bgworkers.settings import Settings

log = get_logger("bgworkers.runner")

#: Limit of the daemon's own statements around runs: tenant discovery, tick
#: claims, leases, history.  Generous: they are single-row writes.
BOOKKEEPING_LIMIT = 30.0
#: A TenantResult status that is no history state: another replica ran the tick.
CLAIMED = "claimed"
MISSED, OK = RunStatus.MISSED.value, RunStatus.OK.value
LEASE_BUSY = "lease held by another run"
DROPPED = "dropped at shutdown: the daemon stopped before this run started"
STILL_RUNNING = "previous run of this tenant still running"
#: Outcomes that count as an error of the tick (a partial run counts its own errors).
_ERRORS = {s.value for s in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.ABANDONED)}
_FAILING = {s.value for s in FAILING}
#: Outcomes of a tenant that did not run here, counted by name in the tick's total.
_NOT_RUN = (RunStatus.SKIPPED.value, MISSED)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {error_line(exc)}"


def _databases(settings: Settings) -> Databases:
    """Engines whose client timeouts outlast the longest run limit (a last resort)."""
    longest = settings.jobs.longest_timeout().total_seconds()
    return Databases(settings, io_timeout=longest + BOOKKEEPING_LIMIT)


def _schema_error(spec: JobSpec[S], ctx: JobContext[S]) -> str | None:
    """After a database error: the tables and columns of the job its databases lack, each
    with the command that provides it; None when the schema is whole."""
    found = []
    for label, engine, tables in (
        (
            f"tenant {ctx.tenant.code}",
            ctx.db,
            [t for t in spec.tables if t.metadata is not core.metadata],
        ),
        ("core", ctx.core, [t for t in spec.tables if t.metadata is core.metadata]),
    ):
        try:
            problems = needs.problems(engine, tables) if tables else []
        except SQLAlchemyError:
            continue  # that database itself is the problem: its own error says so
        if problems:
            found.append(f"{needs.describe(engine, label)}: {'; '.join(problems)}")
    return "\n".join(found) or None


def _outcome(future: Future[TenantResult]) -> TenantResult:
    """A run's result; a run cancelled at shutdown before it started was missed."""
    if future.cancelled():
        return TenantResult(MISSED, error=DROPPED)
    try:
        return future.result()
    except Exception as exc:  # a bug in the runner itself: still one tenant's failure
        log.exception("run_crashed", error=_short(exc))
        return TenantResult(RunStatus.FAILED, error=traceback.format_exc())


@dataclass
class TenantResult:
    status: str  # a RunStatus value, or CLAIMED
    counters: Counters = field(default_factory=dict)
    error: str | None = None
    alerts: list[alerts.Alert] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        return self.status in _FAILING


@dataclass
class TickResult:
    job: str
    tick_at: datetime
    tenants: dict[str, TenantResult] = field(default_factory=dict)
    error: str | None = None  # the tick itself failed (e.g. tenants could not be listed)
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.failing for r in self.tenants.values())

    def total(self, counter_names: tuple[str, ...]) -> Counters:
        """The tick's counters: tenants run, then `counter_names` (a job's), summed."""
        total: Counter[str] = Counter(dict.fromkeys(("tenants", *counter_names), 0))
        for result in self.tenants.values():
            total.update(result.counters)
            if result.status not in (CLAIMED, *_NOT_RUN):
                total["tenants"] += 1
            if result.status in _ERRORS:
                total["errors"] += 1
            if result.status in _NOT_RUN:
                total[result.status] += 1
        return dict(total)

    def as_json(self, counter_names: tuple[str, ...]) -> dict[str, Any]:
        out = {
            "job": self.job,
            "tenants": {
                code: r.counters | ({r.status: 1} if r.status in _NOT_RUN else {})
                for code, r in self.tenants.items()
            },
            "total": self.total(counter_names),
        }
        return out | {"dry_run": True} if self.dry_run else out


class RunMetrics(Protocol):
    """What the runner reports to metrics (the daemon's `service.metrics.Metrics`)."""

    def run_finished(
        self,
        job: str,
        tenant: str,
        status: str,
        seconds: float | None,
        ended: datetime,
        alert_events: list[str],
    ) -> None: ...

    def tick_missed(self, job: str) -> None: ...


@dataclass
class _Run:
    """A queued or running (job, tenant) run of this process."""

    job: str
    tenant: str
    tick_at: datetime
    future: Future[TenantResult] | None = None
    run_id: str | None = None  # once its tick is claimed
    lease: Lease | None = None  # once it holds the lease


class Runner:
    """Runs ticks; shared by the daemon (many ticks) and run-once (one tick).

    Every (job, tenant) run is its own unit: a tick queues one run per tenant
    and a tenant whose previous run of the job is still going misses this tick
    alone.  A tenant whose last run timed out (a stuck database) runs in a
    one-worker slow lane until a run of it succeeds, so stuck tenants never
    hold the workers the others need.  A history write that fails is kept and
    written again once the coordination database answers (`flush_history`).
    """

    def __init__(
        self, settings: Settings, jobs: Mapping[str, JobSpec[Any]], clock: Clock | None = None
    ) -> None:
        self.jobs = jobs  # by name: the registry (`bgworkers.jobs.BY_NAME`)
        self.clock = clock or SystemClock()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.settings = settings
        self.dbs = _databases(settings)
        self.leases = Leases(
            lambda: self.dbs.coordination,
            f"{self.host}:{self.pid}",
            settings.scheduler.lease_ttl.total_seconds(),
        )
        self.workers = settings.scheduler.max_workers
        self.pool = ThreadPoolExecutor(self.workers, "tenant")
        self.slow_lane = ThreadPoolExecutor(1, "tenant-slow")
        self.stalled: set[str] = set()  # tenants whose last run timed out
        self.known_tenants: list[str] = []  # as last discovered: for ticks that cannot list them
        self.stopping = threading.Event()
        self.metrics: RunMetrics | None = None  # the daemon's; run-once has none
        #: Errors not yet followed by a success: (job, tenant or None for the tick) -> (when, text)
        self.errors: dict[tuple[str, str | None], tuple[datetime, str]] = {}
        self._runs: dict[tuple[str, str], _Run] = {}
        self._unwritten: list[tuple[str, Callable[[Engine], object]]] = []
        self._lock = threading.Lock()

    def note_error(self, job: str, tenant: str | None, text: str) -> None:
        """An error of a run (or of the tick: tenant None), kept until `note_ok`."""
        with self._lock:
            self.errors[job, tenant] = (self.clock.now(), text)

    def note_ok(self, job: str, tenant: str) -> None:
        """A run succeeded: its earlier error, and its job's tick error, are over."""
        with self._lock:
            self.errors.pop((job, tenant), None)
            self.errors.pop((job, None), None)

    @property
    def last_error(self) -> tuple[datetime, str] | None:
        """The latest error still standing: (when, text)."""
        with self._lock:
            return max(self.errors.values(), default=None, key=lambda e: e[0])

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

    # -------------------------------------------------------------- ticks

    def tick(
        self,
        job: str,
        tick_at: datetime,
        *,
        only: str | None = None,
        among: Collection[str] | None = None,
        dry_run: bool = False,
        wait: bool = True,
        on_done: Callable[[TickResult], None] | None = None,
    ) -> TickResult:
        """Run `job` for every active tenant (or `only`); never raises.

        `among`: only these tenants, those of them that are active (a catch-up).
        wait=True (run-once): returns once every tenant run has ended.  wait=False
        (the daemon): returns once the runs are queued; `on_done` gets the result
        when the last of them ends.  A dry run (the flag, or the job's `dry_run`
        setting) writes nothing anywhere: no history, no lease.
        """
        spec = self.jobs[job]
        settings, dbs = self.settings, self.dbs
        dry_run = dry_run or spec.settings_in(settings).dry_run_only
        result = TickResult(job, tick_at, dry_run=dry_run)
        started = time.monotonic()
        self.flush_history()

        def finished() -> None:
            if result.error is None:
                self._summarize(spec, result, started)
            if on_done is not None:
                on_done(result)

        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                tenants, problems = discover(settings, dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            result.error = f"cannot list tenants from the core database: {_short(exc)}"
            self.note_error(job, None, result.error)
            log.error("tenant_discovery_failed", job=job, error=result.error)
            if not dry_run:  # every tick of every tenant gets its row, now or later
                for code in self.known_tenants if only is None else [only]:
                    self._tenant_missed(job, code, tick_at, f"not run: {result.error}")
            finished()
            return result
        self.known_tenants = [t.code for t in tenants]
        if only is not None:
            tenants = [t for t in tenants if t.code == only]
            problems = [p for p in problems if p.code == only]
            if not tenants and not problems:
                result.error = self._why_not(only)
                finished()
                return result
        if among is not None:
            tenants = [t for t in tenants if t.code in among]
            problems = [p for p in problems if p.code in among]
        for problem in problems:
            result.tenants[problem.code] = TenantResult(RunStatus.FAILED, {}, problem.error)
            log.error("tenant_refused", job=job, tenant=problem.code, error=problem.error)
        paused = {} if dry_run else pauses.for_tick(dbs.coordination, job)
        futures: dict[str, Future[TenantResult]] = {}
        for tenant in tenants:
            if (pause := pauses.find(paused, job, tenant.code)) is not None:
                result.tenants[tenant.code] = self._tenant_paused(
                    job, tenant.code, tick_at, pause, dbs
                )
                continue
            future = self._submit(spec, tenant, tick_at, dry_run, settings, dbs)
            if future is None:
                result.tenants[tenant.code] = self._tenant_missed(
                    job, tenant.code, tick_at, STILL_RUNNING
                )
            else:
                futures[tenant.code] = future
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

    def _summarize(self, spec: JobSpec[Any], result: TickResult, started: float) -> None:
        statuses = Counter(r.status for r in result.tenants.values())
        total = result.total(spec.counters)
        worst = (
            "warning"
            if result.failed
            else alerts.level(a for r in result.tenants.values() for a in r.alerts)
        )
        log.log(
            LEVELS[worst],
            "job_run_summary",
            job=spec.name,
            tick=result.tick_at.isoformat(),
            dry_run=result.dry_run,
            ms=int((time.monotonic() - started) * 1000),
            **{f"tenants_{k}": v for k, v in statuses.items()},
            **total,
        )

    def _submit(
        self,
        spec: JobSpec[Any],
        tenant: Tenant,
        tick_at: datetime,
        dry_run: bool,
        settings: Settings,
        dbs: Databases,
    ) -> Future[TenantResult] | None:
        """Queue the tenant's run; None when its previous run of this job is still going."""
        key = (spec.name, tenant.code)
        with self._lock:
            if key in self._runs:
                return None
            run = _Run(spec.name, tenant.code, tick_at)
            lane = self.slow_lane if tenant.code in self.stalled else self.pool
            run.future = future = lane.submit(
                self._run_tenant, run, spec, tenant, dry_run, settings, dbs
            )
            self._runs[key] = run
        future.add_done_callback(functools.partial(self._done, key))
        return future

    def _done(self, key: tuple[str, str], future: Future[TenantResult]) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is not None and run.future is future:
                del self._runs[key]

    # -------------------------------------------------------------- one tenant run

    def _run_tenant(
        self,
        run: _Run,
        spec: JobSpec[S],
        tenant: Tenant,
        dry_run: bool,
        settings: Settings,
        dbs: Databases,
    ) -> TenantResult:
        if self.stopping.is_set():
            return self._tenant_missed(spec.name, tenant.code, run.tick_at, DROPPED)
        run_id = str(uuid.uuid4())
        with log_context(job=spec.name, tenant=tenant.code, run_id=run_id):
            tenant_log = get_logger("bgworkers.job")
            ctx = spec.context(settings, tenant, dbs, self.clock, tenant_log, dry_run)
            limit_s = ctx.job_settings.run_limit.total_seconds()
            if dry_run:  # reads only: no claim, no lease, no history
                return self._execute(spec, ctx, limit_s)
            with limits.limited(BOOKKEEPING_LIMIT):
                lease = self._start(spec, tenant.code, run.tick_at, run_id, dbs, tenant_log)
            if isinstance(lease, TenantResult):
                if lease.status != CLAIMED:
                    self._measure(spec.name, tenant.code, lease, None)
                return lease
            with self._lock:
                run.run_id, run.lease = run_id, lease
            started = time.monotonic()
            ctx.guard = lease
            result = TenantResult(RunStatus.FAILED, error="the run ended without a result")
            try:
                result = self._execute(spec, ctx, limit_s)
            finally:
                self._finish(dbs, lease, result)
            with self._lock:
                if result.status == RunStatus.TIMED_OUT:
                    self.stalled.add(tenant.code)
                elif result.status == OK:
                    self.stalled.discard(tenant.code)
            self._measure(spec.name, tenant.code, result, time.monotonic() - started)
            return result

    def _measure(self, job: str, tenant: str, result: TenantResult, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.run_finished(
                job,
                tenant,
                result.status,
                seconds,
                self.clock.now(),
                [a.event for a in result.alerts],
            )

    def _start(
        self,
        spec: JobSpec[Any],
        tenant: str,
        tick_at: datetime,
        run_id: str,
        dbs: Databases,
        tenant_log: FilteringBoundLogger,
    ) -> Lease | TenantResult:
        """Take the lease and claim the tick, in one transaction; a TenantResult when the
        run must not go on."""
        tick = naive_utc(tick_at)
        try:
            with dbs.coordination.connect() as conn:
                # The lease first, then the run's row: its start is stamped once the lease
                # is held, so the recorded interval lies inside it.  A tick that turns out
                # claimed elsewhere rolls the lease back.
                lease = self.leases.acquire(spec.lease_group, tenant, run_id, conn)
                if lease is not None and lease.previous is not None:
                    history.mark_abandoned(conn, lease.previous, self.leases.holder)
                claimed = history.claim(
                    conn,
                    spec.name,
                    tenant,
                    tick,
                    run_id,
                    self.host,
                    self.pid,
                    *((RunStatus.RUNNING, None) if lease else (RunStatus.SKIPPED, LEASE_BUSY)),
                )
                (conn.commit if claimed else conn.rollback)()
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            error = f"not run: coordination database unavailable: {_short(exc)}"
            tenant_log.error("run_not_started", error=error)
            self.note_error(spec.name, tenant, error)
            # Recorded once the database answers again: the tick has a row either way.
            self._defer(
                f"missed {spec.name}/{tenant}",
                functools.partial(
                    history.record_missed,
                    job=spec.name,
                    tenant=tenant,
                    tick_at=tick,
                    run_id=run_id,
                    host=self.host,
                    pid=self.pid,
                    reason=error,
                ),
            )
            return TenantResult(RunStatus.FAILED, error=error)
        if not claimed:
            tenant_log.debug("tick_claimed_elsewhere", tick=tick_at.isoformat())
            return TenantResult(CLAIMED)
        if lease is None:
            tenant_log.info("lease_busy", lease_group=spec.lease_group)
            return TenantResult(RunStatus.SKIPPED, error=LEASE_BUSY)
        self.leases.hold(lease)
        return lease

    def _execute(self, spec: JobSpec[S], ctx: JobContext[S], limit_s: float) -> TenantResult:
        """Run the job for one tenant within its limit; errors are logged and recorded,
        never raised."""
        started = time.monotonic()
        with limits.limited(limit_s) as limit:
            try:
                result = TenantResult(OK, dict(spec.run(ctx)))
            except LeaseLost as exc:
                result = TenantResult(RunStatus.FAILED, error=f"lease lost: {exc}")
                ctx.log.error("run_lease_lost", error=result.error)
            except Exception as exc:  # one tenant never hurts another
                if limit.expired():
                    result = TenantResult(RunStatus.TIMED_OUT, error=limit.error())
                else:
                    named = _schema_error(spec, ctx) if isinstance(exc, SQLAlchemyError) else None
                    result = TenantResult(
                        RunStatus.FAILED,
                        error="\n".join(filter(None, (named, traceback.format_exc()))),
                    )
                    ctx.log.exception("run_failed", error=named or _short(exc))
                self.note_error(
                    spec.name, ctx.tenant.code, f"{spec.name}/{ctx.tenant.code}: {_short(exc)}"
                )
            if limit.fired and result.status != RunStatus.TIMED_OUT:  # went on after its cut
                result = TenantResult(RunStatus.TIMED_OUT, error=limit.error())
        ms = int((time.monotonic() - started) * 1000)
        if result.status == RunStatus.TIMED_OUT:
            self.note_error(
                spec.name, ctx.tenant.code, f"{spec.name}/{ctx.tenant.code}: {result.error}"
            )
            ctx.log.error("run_timed_out", error=result.error, limit_s=limit_s, ms=ms)
        if result.status == OK and (ctx.problems or result.counters.get("errors")):
            result.status = RunStatus.PARTIAL
            result.error = "\n".join(ctx.problems) or (
                f"{result.counters['errors']} part(s) of the run failed (see its log events)"
            )
            self.note_error(
                spec.name,
                ctx.tenant.code,
                f"{spec.name}/{ctx.tenant.code}: {result.error.splitlines()[0]}",
            )
        elif result.status == OK:
            self.note_ok(spec.name, ctx.tenant.code)
        if result.status in (OK, RunStatus.PARTIAL):
            result.alerts = alerts.check(spec.rules, result.counters, ctx.settings.alerts)
            level = alerts.level(result.alerts)
            if result.status == RunStatus.PARTIAL:
                level = max(level, "warning", key=LEVELS.__getitem__)
            ctx.log.log(
                LEVELS[level],
                "job_tenant_result",
                status=result.status,
                ms=ms,
                dry_run=ctx.dry_run,
                **result.counters,
                **({"error": result.error} if result.error else {}),
            )
            for alert in result.alerts:
                ctx.log.log(
                    LEVELS[alert.level],
                    alert.event,
                    counter=alert.counter,
                    value=alert.value,
                    threshold=alert.threshold,
                )
        return result

    # -------------------------------------------------------------- history

    def _finish(self, dbs: Databases, lease: Lease, result: TenantResult) -> None:
        """Release the lease and close the run's history row with its outcome, in one
        transaction; when the database does not answer, the row is closed once it does
        (and the lease expires by itself)."""
        run_id = lease.token
        self.leases.forget(lease)  # renewed no more, even when the release cannot be written
        write = functools.partial(
            history.finish,
            run_id=run_id,
            status=RunStatus(result.status),
            counters=result.counters,
            error=result.error,
        )
        try:
            with limits.limited(BOOKKEEPING_LIMIT), dbs.coordination.begin() as conn:
                self.leases.release(lease, conn)  # the lease first, as in `_start`
                recorded = write(conn)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.warning("history_write_deferred", run_id=run_id, error=_short(exc))
            self._defer(f"finish {run_id}", write)
            return
        if not recorded:
            log.warning(
                "run_end_not_recorded",
                run_id=run_id,
                status=result.status,
                reason="its history row was closed by another holder "
                "(taken over as abandoned); that record stands",
            )

    def _write_or_defer(
        self, what: str, write: Callable[[Engine], object], engine: Engine, **where: str
    ) -> object:
        """Write a history row now; when the database does not answer, keep the write for
        `flush_history` (and return None)."""
        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                return write(engine)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.warning("history_write_deferred", **where, error=_short(exc))
            self._defer(what, write)
            return None

    def _defer(self, what: str, write: Callable[[Engine], object]) -> None:
        with self._lock:
            self._unwritten.append((what, write))

    def flush_history(self) -> int:
        """Write the history rows that failed earlier, in order; returns how many are left."""
        with self._lock:
            pending, self._unwritten = self._unwritten, []
        left: list[tuple[str, Callable[[Engine], object]]] = []
        for what, write in pending:
            if left:  # the database is still away: keep the order
                left.append((what, write))
                continue
            try:
                with limits.limited(BOOKKEEPING_LIMIT):
                    write(self.dbs.coordination)
            except (SQLAlchemyError, limits.RunTimedOut) as exc:
                log.warning("history_write_deferred", write=what, error=_short(exc))
                left.append((what, write))
        if pending and not left:
            log.info("history_writes_recovered", rows=len(pending))
        with self._lock:
            self._unwritten[:0] = left
            return len(self._unwritten)

    def record_missed(self, job: str, tick_at: datetime, reason: str) -> None:
        """Record a tick that did not run here for every tenant (a no-op where one ran it)."""
        try:
            with limits.limited(BOOKKEEPING_LIMIT):
                tenants, _ = discover(self.settings, self.dbs.core)
            codes = [t.code for t in tenants]
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.warning("tenant_discovery_failed", job=job, error=_short(exc))
            codes = list(self.known_tenants)
        for code in codes:
            self._tenant_missed(job, code, tick_at, reason)
        log.warning(
            "tick_missed", job=job, tick=tick_at.isoformat(), reason=reason, tenants=len(codes)
        )

    def _tenant_paused(
        self, job: str, tenant: str, tick_at: datetime, pause: pauses.Pause, dbs: Databases
    ) -> TenantResult:
        """Not run: paused by an operator.  Its tick gets a `skipped` row saying so."""
        write = functools.partial(
            pauses.record_paused,
            job=job,
            tenant=tenant,
            tick_at=naive_utc(tick_at),
            run_id=str(uuid.uuid4()),
            host=self.host,
            pid=self.pid,
            pause=pause,
        )
        if (
            self._write_or_defer(
                f"paused {job}/{tenant}", write, dbs.coordination, job=job, tenant=tenant
            )
            is False
        ):
            return TenantResult(CLAIMED)
        log.info(
            "tenant_paused",
            job=job,
            tenant=tenant,
            tick=tick_at.isoformat(),
            reason=pause.describe(),
        )
        return TenantResult(RunStatus.SKIPPED, error=pause.describe())

    def _tenant_missed(self, job: str, tenant: str, tick_at: datetime, reason: str) -> TenantResult:
        """Record that this tenant's tick did not run here (a no-op where another ran it)."""
        write = functools.partial(
            history.record_missed,
            job=job,
            tenant=tenant,
            tick_at=naive_utc(tick_at),
            run_id=str(uuid.uuid4()),
            host=self.host,
            pid=self.pid,
            reason=reason,
        )
        self._write_or_defer(
            f"missed {job}/{tenant}", write, self.dbs.coordination, job=job, tenant=tenant
        )
        log.warning(
            "tenant_tick_missed", job=job, tenant=tenant, tick=tick_at.isoformat(), reason=reason
        )
        result = TenantResult(MISSED, error=reason)
        if self.metrics is not None:
            self.metrics.tick_missed(job)
        self._measure(job, tenant, result, None)
        return result

    # -------------------------------------------------------------- shutdown

    def inflight(self) -> int:
        with self._lock:
            return len(self._runs)

    def running(self) -> list[tuple[str, str]]:
        """(job, tenant) of the runs queued or going."""
        with self._lock:
            return sorted(self._runs)

    def drain(self, timeout: float, poll: Any = None) -> bool:
        """Start no more tenant runs (the queued ones are recorded missed); wait for the
        running ones.  True when all finished in time."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = {run.future for run in self._runs.values() if run.future is not None}
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait(pending, timeout=min(left, 0.2))
            if poll is not None:
                poll()

    def interrupt(self) -> list[str]:
        """Give up on the runs still going (past the shutdown grace): record them
        `interrupted` and release their leases.  Returns 'job/tenant' of each."""
        limits.cut_all()  # their next statement fails; the servers roll them back
        with self._lock:
            runs = [run for run in self._runs.values() if run.run_id is not None]
        error = (
            f"interrupted: the daemon stopped and the run had not finished within "
            f"shutdown_grace ({self.settings.scheduler.shutdown_grace.total_seconds():g} s)"
        )
        for run in runs:
            if run.lease is not None:
                self._finish(self.dbs, run.lease, TenantResult(RunStatus.INTERRUPTED, error=error))
            log.error(
                "run_interrupted", job=run.job, tenant=run.tenant, run_id=run.run_id, error=error
            )
        return [f"{run.job}/{run.tenant}" for run in runs]

    def close(self) -> None:
        self.stopping.set()
        for lane in (self.pool, self.slow_lane):
            lane.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            dropped = [
                run
                for run in self._runs.values()
                if run.future is not None and run.future.cancelled()
            ]
        for run in dropped:  # queued, never started: the tick has a row all the same
            self._tenant_missed(run.job, run.tenant, run.tick_at, DROPPED)
        left = self.flush_history()
        if left:
            log.error(
                "history_writes_lost",
                rows=left,
                reason="the coordination database did not answer before exit",
            )
        self.leases.stop()
        self.dbs.dispose()
