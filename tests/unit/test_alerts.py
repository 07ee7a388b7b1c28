"""Alert rules: thresholds from [alerts], stable event names, result level."""

from __future__ import annotations

import pytest

from bgworkers.engine.alerts import Alert, check, level
from bgworkers.jobs import BY_NAME
from bgworkers.settings import AlertsSettings


def alerts_of(job: str, counters: dict[str, int], settings: AlertsSettings) -> list[Alert]:
    return check(BY_NAME[job].rules, counters, settings)


CASES = [
    ("serial_consistency", {"quarantined": 10}, {}, []),
    ("serial_consistency", {"quarantined": 11}, {}, ["alert_quarantine_spike"]),
    ("serial_consistency", {"quarantined": 11}, {"quarantined_per_run": 20}, []),
    ("serial_outbox", {"quarantined": 50}, {}, []),  # not an outbox counter
    ("serial_outbox", {"marked_dead": 1}, {}, ["alert_outbox_dead"]),
    ("serial_outbox", {"marked_dead": 3}, {"outbox_dead_per_run": 5}, []),
    ("dashboard_fast", {"errors": 1}, {}, ["alert_job_errors"]),
    ("serial_outbox", {"failed_retry": 5}, {}, []),
    ("serial_outbox", {"failed_retry": 6}, {}, ["alert_outbox_failed_retries"]),
    ("serial_outbox", {"failed_retry": 6}, {"failed_retries_per_run": 6}, []),
    ("dashboard_fast", {"failed_retry": 50}, {}, []),  # an outbox counter only
    (
        "serial_outbox",
        {"marked_dead": 2, "errors": 1},
        {},
        ["alert_outbox_dead", "alert_job_errors"],
    ),
]


@pytest.mark.parametrize(("job", "counters", "thresholds", "events"), CASES)
def test_rules(
    job: str, counters: dict[str, int], thresholds: dict[str, int], events: list[str]
) -> None:
    alerts = alerts_of(job, counters, AlertsSettings(**thresholds))  # type: ignore[arg-type]
    assert [a.event for a in alerts] == events


def test_level_is_the_worst_alert() -> None:
    settings = AlertsSettings()
    assert level([]) == "info"
    assert level(alerts_of("dashboard_fast", {"errors": 1}, settings)) == "warning"
    assert level(alerts_of("serial_outbox", {"errors": 1, "marked_dead": 1}, settings)) == "error"
    alert = alerts_of("serial_outbox", {"marked_dead": 4}, settings)[0]
    assert (alert.counter, alert.value, alert.threshold) == ("marked_dead", 4, 0)
