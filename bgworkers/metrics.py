"""Prometheus metrics (off unless [metrics] listen is set) and the minute watch.

Run metrics are updated by the runner as runs end. Outbox and quarantine
gauges are refreshed by `watch()`, which the daemon runs every minute; it also
logs alert_outbox_backlog for a tenant whose oldest pending outbox row is older
than alerts.outbox_oldest_pending.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bgworkers import limits
from bgworkers.alerts import OUTBOX_BACKLOG
from bgworkers.db import error_line
from bgworkers.logs import get_logger
from bgworkers.outbox_admin import outbox_state
from bgworkers.schema.tenant import (
    ADDED_QUARANTINE_REASONS,
    ERP_QUARANTINE_REASONS,
    serial_quarantine,
)
from bgworkers.settings import Settings
from bgworkers.tenancy import Databases, discover

log = get_logger("bgworkers.metrics")
QUARANTINE_REASONS = ERP_QUARANTINE_REASONS + ADDED_QUARANTINE_REASONS
#: Limit of the watch's reads of one tenant.
WATCH_LIMIT = 10.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("bgworkers_runs", "Tenant runs by result",
                            ["job", "tenant", "status"], registry=r)
        self.duration = Histogram("bgworkers_run_duration_seconds", "Tenant run duration",
                                  ["job"], registry=r,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                           300, 900))
        self.last_success = Gauge("bgworkers_last_success_timestamp_seconds",
                                  "End of the last successful run", ["job", "tenant"],
                                  registry=r)
        self.lease_skips = Counter("bgworkers_lease_skips", "Runs skipped: lease held elsewhere",
                                   ["job", "tenant"], registry=r)
        self.missed = Counter("bgworkers_missed_ticks", "Ticks not run (late or overlapping)",
                              ["job"], registry=r)
        self.alerts = Counter("bgworkers_alerts", "Alert events logged",
                              ["event", "job", "tenant"], registry=r)
        self.outbox = Gauge("bgworkers_outbox_rows", "Outbox rows by status",
                            ["tenant", "status"], registry=r)
        self.outbox_age = Gauge("bgworkers_outbox_oldest_pending_age_seconds",
                                "Age of the oldest pending outbox row (0: none)", ["tenant"],
                                registry=r)
        self.quarantined = Gauge("bgworkers_quarantine_open", "Open quarantine rows by reason",
                                 ["tenant", "reason"], registry=r)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        log.info("metrics_listening", listen=listen)

    def run_finished(self, job: str, tenant: str, status: str, seconds: float | None,
                     ended: datetime, alert_events: list[str]) -> None:
        self.runs.labels(job, tenant, status).inc()
        if status == "skipped":
            self.lease_skips.labels(job, tenant).inc()
        if seconds is not None:
            self.duration.labels(job).observe(seconds)
        if status == "ok":
            self.last_success.labels(job, tenant).set(ended.timestamp())
        for event in alert_events:
            self.alerts.labels(event, job, tenant).inc()

    def watch(self, settings: Settings, dbs: Databases, now: datetime) -> None:
        """Refresh outbox and quarantine gauges per tenant; log outbox backlog alerts."""
        limit = settings.alerts.outbox_oldest_pending
        utc_now = now.replace(tzinfo=None)
        try:
            with limits.limited(WATCH_LIMIT):
                tenants, _ = discover(settings, dbs.core)
        except (SQLAlchemyError, limits.RunTimedOut):
            return  # the next tick reports the core database
        q = serial_quarantine.c
        for tenant in tenants:
            try:
                with limits.limited(WATCH_LIMIT):  # a stuck tenant delays the others little
                    state = outbox_state(dbs, tenant.code, utc_now)
                    with dbs.tenant(tenant.code).connect() as conn:
                        rows = conn.execute(select(q.reason, func.count()).where(
                            q.resolved_at.is_(None)).group_by(q.reason)).tuples()
                        reasons = {str(reason): int(count) for reason, count in rows}
            except (SQLAlchemyError, limits.RunTimedOut) as exc:
                log.warning("watch_failed", tenant=tenant.code, error=error_line(exc))
                continue
            for status in ("pending", "done", "dead"):
                self.outbox.labels(tenant.code, status).set(getattr(state, status))
            age = (utc_now - state.oldest_pending).total_seconds() if state.oldest_pending else 0
            self.outbox_age.labels(tenant.code).set(age)
            for reason in QUARANTINE_REASONS:
                self.quarantined.labels(tenant.code, reason).set(reasons.get(reason, 0))
            if age > limit.total_seconds():
                self.alerts.labels(OUTBOX_BACKLOG, "serial_outbox", tenant.code).inc()
                log.warning(OUTBOX_BACKLOG, job="serial_outbox", tenant=tenant.code,
                            oldest_pending_age_s=int(age), threshold_s=int(limit.total_seconds()),
                            pending=state.pending)
