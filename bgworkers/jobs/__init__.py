"""The job registry: an explicit tuple, one entry per [jobs.NAME] table.

A job's name is its module, its APScheduler id, its settings table, its log
key (`job=`) and, unless it shares one, its lease group.
"""

from __future__ import annotations

from bgworkers.jobs import dashboard, heartbeat, serial_consistency, serial_outbox
from bgworkers.jobs.base import JobSpec
from bgworkers.schema import core, tenant

SERIAL_CONSISTENCY = JobSpec(
    "serial_consistency",
    "serials",  # shares rows with serial_outbox: never both at once for a tenant
    "check serial links, formats and orphans; fix what is safe, quarantine the rest",
    ("tenants", "missing_tenant_links", "missing_core_links", "invalid_formats", "orphaned",
     "duplicates", "mismatches", "unregistered", "legacy", "fixed", "quarantined", "bad_rows",
     "errors"),
    serial_consistency.run,
    (tenant.job_ticket_serial, tenant.flow_token, tenant.job_ticket, tenant.serial_quarantine,
     tenant.serial_link_outbox, core.serial_registry),
)
SERIAL_OUTBOX = JobSpec(
    "serial_outbox",
    "serials",
    "retry core links queued in serial_link_outbox",
    ("tenants", "pending_found", "retried", "succeeded", "failed_retry", "marked_dead",
     "bad_rows", "errors"),
    serial_outbox.run,
    (tenant.serial_link_outbox, core.serial_registry),
)
DASHBOARD_FAST, DASHBOARD_MEDIUM, DASHBOARD_SLOW = (
    JobSpec(f"dashboard_{tier}", f"dashboard_{tier}", f"refresh the {tier} dashboard tier",
            dashboard.COUNTERS, dashboard.run)
    for tier in ("fast", "medium", "slow"))
HEARTBEAT = JobSpec("heartbeat", "heartbeat", "check that every tenant database answers",
                    heartbeat.COUNTERS, heartbeat.run)

REGISTRY: tuple[JobSpec, ...] = (
    SERIAL_CONSISTENCY, SERIAL_OUTBOX, DASHBOARD_FAST, DASHBOARD_MEDIUM, DASHBOARD_SLOW, HEARTBEAT,
)
BY_NAME = {spec.name: spec for spec in REGISTRY}
