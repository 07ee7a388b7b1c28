"""The job registry: one typed declaration per job, in the order jobs are listed.

Each `JobSpec` names the job's settings table type, its counters, its run
function (which gets that table as `ctx.job_settings`), its lease group, the
tables it uses and its alert rules.  `tests/unit/test_job_declarations.py`
checks this registry against the settings model (`JobsSettings`), the shipped
settings.toml, the alert rules and the Prometheus rules.
"""

from __future__ import annotations

from typing import Any

from bgworkers.engine.alerts import OUTBOX_BACKLOG, Rule
from bgworkers.engine.job import JobSpec
from bgworkers.jobs import heartbeat
from bgworkers.jobs.dashboards import job as dashboard
from bgworkers.jobs.dashboards.job import Tier
from bgworkers.jobs.outbox import job as serial_outbox
from bgworkers.jobs.serials import consistency as serial_consistency
from bgworkers.schema import core, tenant
from bgworkers.settings import (
    DashboardFastSettings,
    DashboardMediumSettings,
    DashboardSlowSettings,
    HeartbeatSettings,
    SerialConsistencySettings,
    SerialOutboxSettings,
)

SERIAL_CONSISTENCY = JobSpec(
    "serial_consistency",
    SerialConsistencySettings,
    "check serial links, formats and orphans; fix what is safe, quarantine the rest",
    serial_consistency.COUNTERS,
    serial_consistency.run,
    lease_group="serials",  # shares rows with serial_outbox: never both at once for a tenant
    tables=(
        tenant.job_ticket_serial,
        tenant.flow_token,
        tenant.job_ticket,
        tenant.serial_quarantine,
        tenant.serial_link_outbox,
        core.serial_registry,
    ),
    alerts=(Rule("alert_quarantine_spike", "warning", "quarantined", "quarantined_per_run"),),
)
SERIAL_OUTBOX = JobSpec(
    "serial_outbox",
    SerialOutboxSettings,
    "retry core links queued in serial_link_outbox",
    serial_outbox.COUNTERS,
    serial_outbox.run,
    lease_group="serials",
    tables=(tenant.serial_link_outbox, core.serial_registry),
    alerts=(
        Rule("alert_outbox_dead", "error", "marked_dead", "outbox_dead_per_run"),
        Rule("alert_outbox_failed_retries", "warning", "failed_retry", "failed_retries_per_run"),
    ),
    watch_alerts=(OUTBOX_BACKLOG,),
)


def _dashboard(tier: str, settings: type[Tier]) -> JobSpec[Tier]:
    return JobSpec(
        f"dashboard_{tier}",
        settings,
        f"refresh the {tier} dashboard tier",
        dashboard.COUNTERS,
        dashboard.run,
    )


DASHBOARD_FAST = _dashboard("fast", DashboardFastSettings)
DASHBOARD_MEDIUM = _dashboard("medium", DashboardMediumSettings)
DASHBOARD_SLOW = _dashboard("slow", DashboardSlowSettings)
HEARTBEAT = JobSpec(
    "heartbeat",
    HeartbeatSettings,
    "check that every tenant database answers",
    heartbeat.COUNTERS,
    heartbeat.run,
)

REGISTRY: tuple[JobSpec[Any], ...] = (
    SERIAL_CONSISTENCY,
    SERIAL_OUTBOX,
    DASHBOARD_FAST,
    DASHBOARD_MEDIUM,
    DASHBOARD_SLOW,
    HEARTBEAT,
)
BY_NAME = {spec.name: spec for spec in REGISTRY}
