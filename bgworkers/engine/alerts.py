"""Alert rules: a counter of a tenant run above its `[alerts]` threshold.

A job's own rules are part of its spec (`bgworkers.jobs`); `EVERY_JOB` applies
to all of them.  Each crossing is logged as an event with a stable name (for
journalctl and log-based alerting) and counted in the metrics; the tenant's
result event is logged at the highest level among its alerts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bgworkers.engine.logs import LEVELS
from bgworkers.settings import AlertsSettings


@dataclass(frozen=True)
class Rule:
    event: str
    level: str  # a logs.LEVELS name
    counter: str
    threshold: str  # the AlertsSettings field


@dataclass(frozen=True)
class Alert:
    event: str
    level: str
    counter: str
    value: int
    threshold: int


#: The rules of every job (each job's counters have `errors`).
EVERY_JOB = (Rule("alert_job_errors", "warning", "errors", "errors_per_run"),)
#: Logged by the outbox watch when a tenant's oldest pending row is older than
#: alerts.outbox_oldest_pending (not a per-run counter).
OUTBOX_BACKLOG = "alert_outbox_backlog"


def check(
    rules: Iterable[Rule], counters: Mapping[str, int], settings: AlertsSettings
) -> list[Alert]:
    """The alerts of one tenant run: its counters above their rules' thresholds."""
    alerts = []
    for rule in rules:
        value, limit = counters.get(rule.counter, 0), getattr(settings, rule.threshold)
        if value > limit:
            alerts.append(Alert(rule.event, rule.level, rule.counter, value, limit))
    return alerts


def level(alerts: Iterable[Alert]) -> str:
    return max((a.level for a in alerts), key=LEVELS.__getitem__, default="info")
