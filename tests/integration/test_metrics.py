"""Metrics at start-up and in the minute watch: zero series, restored last success,
fresh or failed polls, and labels a real Prometheus keeps as they are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import DbUrls, MakeWorld
from prometheus_client import generate_latest

from bgworkers.engine.history import RunStatus
from bgworkers.engine.tenancy import Databases
from bgworkers.schema.own import run
from bgworkers.service.metrics import STATUSES, Metrics
from bgworkers.settings import Settings, load_settings

NOW = datetime.now(UTC).replace(microsecond=0)
DOWN = "sqlite:////nonexistent-dir/{code_lower}.db"


def add_runs(core_url: str, rows: list[tuple[str, str, str, timedelta]]) -> None:
    """(job, tenant, status, age) history rows ending `age` before NOW (naive UTC)."""
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    now = NOW.replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            run.insert(),
            [
                {
                    "job": job,
                    "tenant": tenant,
                    "tick_at": now - age,
                    "run_id": f"r{i}",
                    "host": "h",
                    "pid": 1,
                    "started_at": now - age - timedelta(seconds=1),
                    "ended_at": now - age,
                    "status": status,
                }
                for i, (job, tenant, status, age) in enumerate(rows)
            ],
        )
    engine.dispose()


def with_urls(settings: Settings, **urls: str) -> Settings:
    return settings.model_copy(update={"database": settings.database.model_copy(update=urls)})


@pytest.fixture
def settings(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> Settings:
    config = heartbeat_settings(
        tmp_path / "s.toml",
        db_urls,
        every="1m",
        extra="""
[jobs.serial_outbox]
enabled = true
every = "5m"
[jobs.serial_consistency]
enabled = true
cron = "0 * * * *"
""",
    )
    make_world(config, ["A", "B"], erp_schema=True)
    return load_settings(config)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_start_restores_last_success_and_makes_zero_series(
    db_urls: DbUrls, settings: Settings
) -> None:
    minute = timedelta(minutes=1)
    add_runs(
        db_urls.core_url,
        [
            ("heartbeat", "A", "ok", 10 * minute),
            ("heartbeat", "A", "ok", 3 * minute),
            ("heartbeat", "A", "failed", minute),
            ("heartbeat", "A", "running", minute / 2),
            ("heartbeat", "B", "failed", 2 * minute),
            ("serial_outbox", "A", "ok", 7 * minute),
            ("heartbeat", "gone", "ok", minute),  # a tenant no longer served
            ("dashboard_fast", "A", "ok", minute),  # a job not enabled
        ],
    )
    m, dbs = Metrics(), Databases(settings)
    try:
        m.start(settings, dbs, NOW)
    finally:
        dbs.dispose()
    ok_at = value(m, "bgworkers_last_success_timestamp_seconds", job_name="heartbeat", tenant="A")
    assert ok_at == pytest.approx((NOW - 3 * minute).timestamp(), abs=0.01)
    assert value(
        m, "bgworkers_last_success_timestamp_seconds", job_name="serial_outbox", tenant="A"
    ) == pytest.approx((NOW - 7 * minute).timestamp(), abs=0.01)
    for job, tenant in (("heartbeat", "B"), ("heartbeat", "gone"), ("dashboard_fast", "A")):
        assert (
            value(m, "bgworkers_last_success_timestamp_seconds", job_name=job, tenant=tenant)
            is None
        ), (job, tenant)

    assert set(STATUSES) == {s.value for s in RunStatus} - {"running"}
    for job in ("heartbeat", "serial_outbox", "serial_consistency"):
        for tenant in ("A", "B"):
            for status in STATUSES:
                assert (
                    value(m, "bgworkers_runs_total", job_name=job, tenant=tenant, status=status)
                    == 0
                ), (job, tenant, status)
            assert value(m, "bgworkers_lease_skips_total", job_name=job, tenant=tenant) == 0
        assert value(m, "bgworkers_missed_ticks_total", job_name=job) == 0
        assert value(m, "bgworkers_run_duration_seconds_count", job_name=job) == 0
    assert (
        value(m, "bgworkers_runs_total", job_name="heartbeat", tenant="A", status="running") is None
    )
    assert (
        value(m, "bgworkers_runs_total", job_name="dashboard_fast", tenant="A", status="ok") is None
    )
    for event in (
        "alert_outbox_dead",
        "alert_outbox_failed_retries",
        "alert_job_errors",
        "alert_outbox_backlog",
    ):
        assert (
            value(m, "bgworkers_alerts_total", event=event, job_name="serial_outbox", tenant="B")
            == 0
        )
    assert (
        value(
            m,
            "bgworkers_alerts_total",
            event="alert_quarantine_spike",
            job_name="serial_consistency",
            tenant="A",
        )
        == 0
    )

    assert value(m, "bgworkers_job_interval_seconds", job_name="heartbeat") == 60
    assert value(m, "bgworkers_job_interval_seconds", job_name="serial_outbox") == 300
    assert value(m, "bgworkers_job_interval_seconds", job_name="serial_consistency") == 3600
    assert value(m, "bgworkers_job_interval_seconds", job_name="dashboard_fast") is None
    assert value(m, "bgworkers_outbox_backlog_threshold_seconds") == 3600
    text = generate_latest(m.registry).decode()
    assert 'bgworkers_build_info{python="' in text
    assert "job=" not in text and "instance=" not in text


def test_a_run_newer_than_history_is_kept(db_urls: DbUrls, settings: Settings) -> None:
    add_runs(db_urls.core_url, [("heartbeat", "A", "ok", timedelta(hours=1))])
    m, dbs = Metrics(), Databases(settings)
    m.run_finished("heartbeat", "A", "ok", 0.1, NOW, [])
    try:
        m.start(settings, dbs, NOW)
    finally:
        dbs.dispose()
    assert (
        value(m, "bgworkers_last_success_timestamp_seconds", job_name="heartbeat", tenant="A")
        == NOW.timestamp()
    )
    assert value(m, "bgworkers_runs_total", job_name="heartbeat", tenant="A", status="ok") == 1


def test_down_at_start_then_the_watch_catches_up(db_urls: DbUrls, settings: Settings) -> None:
    add_runs(db_urls.core_url, [("heartbeat", "B", "ok", timedelta(minutes=2))])
    down = with_urls(settings, core_url=DOWN.format(code_lower="core"), tenant_url=DOWN)
    m, dbs_down, dbs = Metrics(), Databases(down), Databases(settings)
    try:
        m.start(down, dbs_down, NOW)  # core unreachable: no exception
        assert value(m, "bgworkers_job_interval_seconds", job_name="heartbeat") == 60
        assert (
            value(m, "bgworkers_runs_total", job_name="heartbeat", tenant="B", status="ok") is None
        )
        m.watch(down, dbs_down, NOW)  # still down: nothing known, nothing raised

        m.watch(settings, dbs, NOW)
        assert (
            value(m, "bgworkers_runs_total", job_name="heartbeat", tenant="B", status="failed") == 0
        )
        assert value(
            m, "bgworkers_last_success_timestamp_seconds", job_name="heartbeat", tenant="B"
        ) == pytest.approx((NOW - timedelta(minutes=2)).timestamp(), abs=0.01)
        for tenant in ("A", "B"):
            assert value(m, "bgworkers_watch_up", tenant=tenant) == 1
            assert value(m, "bgworkers_watch_errors_total", tenant=tenant) == 0
            assert (
                value(m, "bgworkers_watch_last_success_timestamp_seconds", tenant=tenant)
                == NOW.timestamp()
            )
            assert value(m, "bgworkers_outbox_rows", tenant=tenant, status="dead") == 0
    finally:
        dbs_down.dispose()
        dbs.dispose()


def test_failed_polls_are_counted_not_hidden(db_urls: DbUrls, settings: Settings) -> None:
    m, dbs = Metrics(), Databases(settings)
    later = NOW + timedelta(minutes=1)
    tenants_down = with_urls(settings, tenant_url=DOWN)
    core_down = with_urls(settings, core_url=DOWN.format(code_lower="core"))
    dbs_tenants_down, dbs_core_down = Databases(tenants_down), Databases(core_down)
    try:
        m.start(settings, dbs, NOW)
        m.watch(settings, dbs, NOW)
        m.watch(tenants_down, dbs_tenants_down, later)
        for tenant in ("A", "B"):
            assert value(m, "bgworkers_watch_up", tenant=tenant) == 0
            assert value(m, "bgworkers_watch_errors_total", tenant=tenant) == 1
            assert (
                value(m, "bgworkers_watch_last_success_timestamp_seconds", tenant=tenant)
                == NOW.timestamp()
            )  # the old values are this old
        m.watch(core_down, dbs_core_down, later)
        assert value(m, "bgworkers_watch_errors_total", tenant="A") == 2
        m.watch(settings, dbs, later)
        assert value(m, "bgworkers_watch_up", tenant="A") == 1
        assert (
            value(m, "bgworkers_watch_last_success_timestamp_seconds", tenant="A")
            == later.timestamp()
        )
    finally:
        for engines in (dbs, dbs_tenants_down, dbs_core_down):
            engines.dispose()


def test_a_tenant_no_longer_served_loses_its_series(db_urls: DbUrls, settings: Settings) -> None:
    m, dbs = Metrics(), Databases(settings)
    without_b = settings.model_copy(
        update={"tenants": settings.tenants.model_copy(update={"exclude": ["B"]})}
    )
    try:
        m.start(settings, dbs, NOW)
        m.run_finished("heartbeat", "B", "ok", 0.1, NOW, [])
        m.watch(without_b, dbs, NOW)
    finally:
        dbs.dispose()
    text = generate_latest(m.registry).decode()
    assert 'tenant="A"' in text and 'tenant="B"' not in text
