"""Prometheus metrics (off unless [metrics] listen is set) and the minute watch.

Labels are `job_name`, never `job` or `instance`: those are the target labels
Prometheus adds to every scraped series (it would rename ours `exported_job`).

`start()` (once, before serving) makes every series an alert rule or dashboard
needs exist from the first scrape: runs, lease skips and alert events at zero
for each enabled job, status and known tenant (tenants are discovered once; a
database that is down only leaves them to the watch), each enabled job's
interval, the build, and `last_success` restored from the run history so a
stale job shows right after a restart.

Run metrics are updated by the runner as runs end. Outbox and quarantine
gauges are refreshed by `watch()`, which the daemon runs every minute; each
tenant's gauges carry the time of their last successful poll, and a failed poll
is counted and sets `bgworkers_watch_up` to 0 instead of silently keeping the
old value. The watch also logs alert_outbox_backlog for a tenant whose oldest
pending outbox row is older than alerts.outbox_oldest_pending, and picks up
tenants and settings that changed since the start.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime, timedelta

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bgworkers import __version__
from bgworkers.db import error_line, limits
from bgworkers.engine.alerts import OUTBOX_BACKLOG
from bgworkers.engine.clock import aware_utc, naive_utc
from bgworkers.engine.history import RunStatus
from bgworkers.engine.logs import get_logger
from bgworkers.engine.scheduler import make_trigger
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.jobs import BY_NAME, REGISTRY, SERIAL_OUTBOX
from bgworkers.jobs.outbox.admin import outbox_state
from bgworkers.schema.own import run as run_table
from bgworkers.schema.tenant import (
    ADDED_QUARANTINE_REASONS,
    ERP_QUARANTINE_REASONS,
    OUTBOX_STATUSES,
    serial_quarantine,
)
from bgworkers.settings import JobSettings, Settings

log = get_logger("bgworkers.metrics")
QUARANTINE_REASONS = ERP_QUARANTINE_REASONS + ADDED_QUARANTINE_REASONS
#: Final outcomes of a tenant run: each has a series per job and tenant from the start.
STATUSES = tuple(s.value for s in RunStatus if s is not RunStatus.RUNNING)
#: Limit of the watch's reads of one tenant.
WATCH_LIMIT = 10.0
#: Limit of each start-up read (tenants, run history): a stuck database delays READY little.
START_LIMIT = 5.0
#: The `_created` series of counters and histograms: no rule or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def job_interval(job: JobSettings, settings: Settings, now: datetime) -> float:
    """Seconds between two ticks: `every`, or the gap after the next fire of a cron."""
    if job.every is not None:
        return job.every.total_seconds()
    trigger = make_trigger(job, settings.scheduler, jitter=False)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1))
    return float((second - first).total_seconds())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: "since start" in rules
        self.runs = Counter(
            "bgworkers_runs",
            "Tenant runs by final status",
            ["job_name", "tenant", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "bgworkers_run_duration_seconds",
            "Tenant run duration",
            ["job_name"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self.last_success = Gauge(
            "bgworkers_last_success_timestamp_seconds",
            "End of the last successful run (restored from run history at start)",
            ["job_name", "tenant"],
            registry=r,
        )
        self.lease_skips = Counter(
            "bgworkers_lease_skips",
            "Runs skipped: lease held elsewhere",
            ["job_name", "tenant"],
            registry=r,
        )
        self.missed = Counter(
            "bgworkers_missed_ticks",
            "Ticks not run (late or overlapping)",
            ["job_name"],
            registry=r,
        )
        self.alerts = Counter(
            "bgworkers_alerts", "Alert events logged", ["event", "job_name", "tenant"], registry=r
        )
        self.interval = Gauge(
            "bgworkers_job_interval_seconds",
            "Interval between ticks of each enabled job",
            ["job_name"],
            registry=r,
        )
        self.build_info = Gauge(
            "bgworkers_build_info",
            "Version of bgworkers and of Python",
            ["version", "python"],
            registry=r,
        )
        self.backlog_threshold = Gauge(
            "bgworkers_outbox_backlog_threshold_seconds",
            "alerts.outbox_oldest_pending: the oldest pending outbox row may be this old",
            registry=r,
        )
        self.outbox = Gauge(
            "bgworkers_outbox_rows", "Outbox rows by status", ["tenant", "status"], registry=r
        )
        self.outbox_age = Gauge(
            "bgworkers_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row (0: none)",
            ["tenant"],
            registry=r,
        )
        self.quarantined = Gauge(
            "bgworkers_quarantine_open",
            "Open quarantine rows by reason",
            ["tenant", "reason"],
            registry=r,
        )
        self.watch_fresh = Gauge(
            "bgworkers_watch_last_success_timestamp_seconds",
            "When the outbox and quarantine gauges of a tenant were last read",
            ["tenant"],
            registry=r,
        )
        self.watch_up = Gauge(
            "bgworkers_watch_up",
            "1 when the last outbox/quarantine poll of a tenant succeeded, "
            "0 when it failed (its gauges keep older values)",
            ["tenant"],
            registry=r,
        )
        self.watch_errors = Counter(
            "bgworkers_watch_errors",
            "Failed outbox/quarantine polls of a tenant",
            ["tenant"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._tenants: set[str] = set()
        self._jobs: set[str] = set()
        self._restored = False
        self._ok_at: dict[tuple[str, str], float] = {}

    # -------------------------------------------------------------- start-up

    def start(self, settings: Settings, dbs: Databases, now: datetime) -> None:
        """Series present from the first scrape; last_success restored from history."""
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._configure(settings, now)
        try:
            with limits.limited(START_LIMIT):
                tenants, _ = discover(settings, dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.warning(
                "metrics_tenants_unknown",
                error=error_line(exc),
                then="the minute watch discovers them",
            )
            return
        self._set_tenants({t.code for t in tenants})
        self.restore(dbs)

    def restore(self, dbs: Databases) -> bool:
        """last_success of each enabled job and known tenant from `bgw_run`; False on error."""
        c = run_table.c
        query = (
            select(c.job, c.tenant, func.max(c.ended_at))
            .where(c.status == RunStatus.OK.value, c.ended_at.is_not(None))
            .group_by(c.job, c.tenant)
        )
        try:
            with limits.limited(START_LIMIT), dbs.coordination.connect() as conn:
                rows = [
                    (str(j), str(t), at if isinstance(at, datetime) else None)
                    for j, t, at in conn.execute(query)
                ]
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            log.warning(
                "metrics_restore_failed", error=error_line(exc), then="retried by the minute watch"
            )
            return False
        with self._lock:
            for job, tenant, ended in rows:
                if job in self._jobs and tenant in self._tenants and ended is not None:
                    self._success(job, tenant, aware_utc(ended).timestamp())
            self._restored = True
        log.info(
            "metrics_restored",
            last_success=sum(1 for j, t, _ in rows if j in self._jobs and t in self._tenants),
        )
        return True

    def _success(self, job: str, tenant: str, at: float) -> None:
        """Keep the latest success (a restore may come after a run); hold self._lock."""
        if at >= self._ok_at.get((job, tenant), 0.0):
            self._ok_at[job, tenant] = at
            self.last_success.labels(job, tenant).set(at)

    def _configure(self, settings: Settings, now: datetime) -> None:
        """Intervals and per-job series of the enabled jobs (again after a reload)."""
        self.backlog_threshold.set(settings.alerts.outbox_oldest_pending.total_seconds())
        jobs = {spec.name for spec in REGISTRY if settings.jobs.get(spec.name).enabled}
        with self._lock:
            for gone in self._jobs - jobs:
                with suppress(KeyError):
                    self.interval.remove(gone)
            for job in jobs:
                self.interval.labels(job).set(job_interval(settings.jobs.get(job), settings, now))
                self.missed.labels(job)
                self.duration.labels(job)
            new_jobs = jobs - self._jobs
            self._jobs = jobs
            self._zero(new_jobs, self._tenants)

    def _set_tenants(self, tenants: set[str]) -> None:
        """Zero series for new tenants; the series of tenants no longer served go."""
        with self._lock:
            for gone in self._tenants - tenants:
                self._forget(gone)
            self._zero(self._jobs, tenants - self._tenants)
            self._tenants = set(tenants)

    def _zero(self, jobs: Iterable[str], tenants: Iterable[str]) -> None:
        tenants = list(tenants)
        for job in jobs:
            for tenant in tenants:
                for status in STATUSES:
                    self.runs.labels(job, tenant, status)
                self.lease_skips.labels(job, tenant)
                for event in BY_NAME[job].alert_events:
                    self.alerts.labels(event, job, tenant)

    def _forget(self, tenant: str) -> None:
        """Drop a departed tenant's series, so no rule keeps alerting on it."""
        names = [spec.name for spec in REGISTRY]
        removals: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
        for job in names:
            self._ok_at.pop((job, tenant), None)
            removals += [(self.runs, (job, tenant, s)) for s in STATUSES]
            removals += [(self.lease_skips, (job, tenant)), (self.last_success, (job, tenant))]
            removals += [(self.alerts, (e, job, tenant)) for e in BY_NAME[job].alert_events]
        removals += [(self.outbox, (tenant, s)) for s in OUTBOX_STATUSES]
        removals += [(self.quarantined, (tenant, r)) for r in QUARANTINE_REASONS]
        removals += [
            (m, (tenant,))
            for m in (self.outbox_age, self.watch_fresh, self.watch_up, self.watch_errors)
        ]
        for metric, labels in removals:
            with suppress(KeyError):
                metric.remove(*labels)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        log.info("metrics_listening", listen=listen)

    # -------------------------------------------------------------- runs

    def tick_missed(self, job: str) -> None:
        self.missed.labels(job).inc()

    def run_finished(
        self,
        job: str,
        tenant: str,
        status: str,
        seconds: float | None,
        ended: datetime,
        alert_events: list[str],
    ) -> None:
        self.runs.labels(job, tenant, status).inc()
        if status == RunStatus.SKIPPED:
            self.lease_skips.labels(job, tenant).inc()
        if seconds is not None:
            self.duration.labels(job).observe(seconds)
        if status == RunStatus.OK:
            with self._lock:
                self._success(job, tenant, ended.timestamp())
        for event in alert_events:
            self.alerts.labels(event, job, tenant).inc()

    # -------------------------------------------------------------- the minute watch

    def _poll_failed(self, tenant: str) -> None:
        self.watch_errors.labels(tenant).inc()
        self.watch_up.labels(tenant).set(0)

    def watch(self, settings: Settings, dbs: Databases, now: datetime) -> None:
        """Refresh outbox and quarantine gauges per tenant; log outbox backlog alerts."""
        self._configure(settings, now)
        limit = settings.alerts.outbox_oldest_pending
        utc_now = naive_utc(now)
        try:
            with limits.limited(WATCH_LIMIT):
                tenants, _ = discover(settings, dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            # the next tick reports the core database; no tenant's gauges are fresh
            log.warning("watch_failed", error=error_line(exc))
            with self._lock:
                known = sorted(self._tenants)
            for code in known:
                self._poll_failed(code)
            return
        self._set_tenants({t.code for t in tenants})
        if not self._restored:
            self.restore(dbs)
        q = serial_quarantine.c
        for tenant in tenants:
            try:
                with limits.limited(WATCH_LIMIT):  # a stuck tenant delays the others little
                    state = outbox_state(dbs, tenant.code, utc_now)
                    with dbs.tenant(tenant.code).connect() as conn:
                        rows = conn.execute(
                            select(q.reason, func.count())
                            .where(q.resolved_at.is_(None))
                            .group_by(q.reason)
                        ).tuples()
                        reasons = {str(reason): int(count) for reason, count in rows}
            except (SQLAlchemyError, limits.RunTimedOut) as exc:
                log.warning("watch_failed", tenant=tenant.code, error=error_line(exc))
                self._poll_failed(tenant.code)
                continue
            for status in OUTBOX_STATUSES:
                self.outbox.labels(tenant.code, status).set(getattr(state, status))
            age = (utc_now - state.oldest_pending).total_seconds() if state.oldest_pending else 0
            self.outbox_age.labels(tenant.code).set(age)
            for reason in QUARANTINE_REASONS:
                self.quarantined.labels(tenant.code, reason).set(reasons.get(reason, 0))
            self.watch_errors.labels(tenant.code)
            self.watch_up.labels(tenant.code).set(1)
            self.watch_fresh.labels(tenant.code).set(now.timestamp())
            if age > limit.total_seconds():
                self.alerts.labels(OUTBOX_BACKLOG, SERIAL_OUTBOX.name, tenant.code).inc()
                log.warning(
                    OUTBOX_BACKLOG,
                    job=SERIAL_OUTBOX.name,
                    tenant=tenant.code,
                    oldest_pending_age_s=int(age),
                    threshold_s=int(limit.total_seconds()),
                    pending=state.pending,
                )
