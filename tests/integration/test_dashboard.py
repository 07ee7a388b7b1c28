"""Dashboard refresh on SQLite and MariaDB against a hand-built tenant (tests/dashboard_data.py).

Both backends are checked against the same hand-computed values, so they give the same rows.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dashboard_data import (
    BOTTLENECKS,
    CYCLE,
    FLOW,
    NOW,
    PERIOD,
    SNAP,
    TRENDS,
    WORKLOAD,
    D,
    event_row,
    keyed,
    latest,
    load,
    token_row,
)
from helpers import DbUrls, build_world, write_settings
from jobs_helpers import alert_level
from structlog.testing import capture_logs

from bgworkers.demo.harness import make_context
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.job import JobContext, LeaseLost
from bgworkers.engine.runner import Runner
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs import BY_NAME
from bgworkers.jobs.dashboards import job as dashboard
from bgworkers.jobs.dashboards.sql import Moment
from bgworkers.jobs.dashboards.trends import rewrite_from
from bgworkers.schema import own
from bgworkers.schema import tenant as t
from bgworkers.settings import Settings

TIERS = ("dashboard_fast", "dashboard_medium", "dashboard_slow")


@dataclass
class Env:
    settings: Settings
    dbs: Databases

    @property
    def db(self) -> sa.Engine:
        return self.dbs.tenant("DEFAULT")

    def ctx(self, job: str, now: datetime = NOW, dry_run: bool = False) -> JobContext:
        return make_context(self.settings, self.dbs, "DEFAULT", now, job, dry_run)

    def refresh(self, job: str, now: datetime = NOW) -> dict[str, int]:
        return dashboard.run(self.ctx(job, now))


SETTINGS = """
[erp]
timezone = "Asia/Bangkok"
[jobs.dashboard_fast]
delete_batch = 2
[jobs.dashboard_medium]
delete_batch = 2
[jobs.dashboard_slow]
delete_batch = 2
"""


def make_env(db_urls: DbUrls, directory: Path) -> Env:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_settings(directory / "settings.toml", db_urls, SETTINGS)
    world = build_world(config, ["DEFAULT"], erp_schema=True)
    environment = Env(world.settings, world.dbs)
    load(environment.db)
    return environment


@pytest.fixture
def env(db_urls: DbUrls, tmp_path: Path) -> Iterator[Env]:
    environment = make_env(db_urls, tmp_path)
    yield environment
    environment.dbs.dispose()


def flow(rows: list[sa.Row[Any]]) -> dict[Any, tuple[Any, ...]]:
    return keyed(
        rows, ("graph_id", "node_id", "team_id"), ("wip_count", "completed_count", "waiting_count")
    )


def bottlenecks(rows: list[sa.Row[Any]]) -> dict[Any, tuple[Any, ...]]:
    return keyed(
        rows,
        ("node_id",),
        ("node_code", "node_name", "queue_depth", "avg_wait_minutes", "bottleneck_score"),
    )


def workload(rows: list[sa.Row[Any]]) -> dict[Any, tuple[Any, ...]]:
    return keyed(
        rows,
        ("team_id",),
        ("team_name", "team_category", "active_tokens", "waiting_tokens", "avg_load"),
    )


def cycle(rows: list[sa.Row[Any]]) -> dict[Any, tuple[Any, ...]]:
    assert {(r.period_start, r.period_end) for r in rows} == {PERIOD}
    return keyed(
        rows, ("node_id", "team_id"), ("token_count", "p50_minutes", "p95_minutes", "avg_minutes")
    )


def trends(rows: list[sa.Row[Any]]) -> dict[Any, tuple[Any, ...]]:
    return keyed(
        rows,
        ("period_date", "production_type", "graph_id"),
        ("tokens_spawned", "tokens_completed", "avg_lead_time_hours", "throughput_per_day"),
    )


def test_every_table_matches_the_hand_computed_rows(env: Env) -> None:
    contexts = [env.ctx(job) for job in TIERS]  # (a new logger would end the capture)
    with capture_logs() as logs:
        counters = [dashboard.run(ctx) for ctx in contexts]
    sizes = [len(FLOW) + len(BOTTLENECKS) + len(WORKLOAD), len(CYCLE), len(TRENDS)]
    assert counters == [
        {"tables": n, "rows_written": rows, "rows_deleted": 0, "errors": 0}
        for n, rows in zip((3, 1, 1), sizes, strict=True)
    ]
    tables = {
        "mv_token_flow_summary": (flow, FLOW),
        "mv_node_bottlenecks": (bottlenecks, BOTTLENECKS),
        "mv_team_workload": (workload, WORKLOAD),
        "mv_cycle_time_analytics": (cycle, CYCLE),
        "mv_dashboard_trends": (trends, TRENDS),
    }
    for name, (shape, expected) in tables.items():
        rows = latest(env.db, t.metadata.tables[name])
        assert {r.snapshot_at for r in rows} == {SNAP}, name
        assert shape(rows) == expected, name
    events = [e for e in logs if e["event"] == "dashboard_table_refreshed"]
    assert [e["table"] for e in events] == list(tables)
    assert all(isinstance(e["ms"], int) and e["ms"] >= 0 for e in events)
    assert [e["rows"] for e in events] == [
        len(FLOW),
        len(BOTTLENECKS),
        len(WORKLOAD),
        len(CYCLE),
        len(TRENDS),
    ]


@contextmanager
def mariadb_urls(server_url: str) -> Iterator[DbUrls]:
    """Core and tenant databases of this test on the session's MariaDB, dropped after."""
    prefix = f"bgw_dash_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    try:
        with server.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {prefix}_core"))
        base = f"{server_url}/{prefix}"
        yield DbUrls(
            "mariadb", f"{base}_core?charset=utf8mb4", base + "_t_{code_lower}?charset=utf8mb4"
        )
    finally:
        with server.begin() as conn:
            for name in (f"{prefix}_core", f"{prefix}_t_default"):
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        server.dispose()


def dump(engine: sa.Engine) -> dict[str, list[tuple[str, ...]]]:
    """Every summary row, every column but the id, with its Python type: comparable as is."""
    out = {}
    with engine.connect() as conn:
        for name in dashboard.TABLES:
            table = t.metadata.tables[name]
            rows = conn.execute(sa.select(*[c for c in table.columns if c.name != "id"]))
            out[name] = sorted(tuple(f"{type(v).__name__}:{v}" for v in row) for row in rows)
    return out


@pytest.mark.mariadb
def test_sqlite_and_mariadb_write_identical_rows(tmp_path: Path, mariadb_server_url: str) -> None:
    sqlite_urls = DbUrls(
        "sqlite", f"sqlite:///{tmp_path}/core.db", f"sqlite:///{tmp_path}/t_{{code_lower}}.db"
    )
    dumps = []
    with mariadb_urls(mariadb_server_url) as maria_urls:
        for urls in (sqlite_urls, maria_urls):
            environment = make_env(urls, tmp_path / urls.backend)
            try:
                for job in TIERS:
                    environment.refresh(job)
                environment.refresh("dashboard_slow", NOW + timedelta(days=1))  # copies rows too
                dumps.append(dump(environment.db))
            finally:
                environment.dbs.dispose()
    assert dumps[0] == dumps[1]
    assert all(dumps[0].values())


def _visits(env: Env) -> set[tuple[Any, ...]]:
    with env.db.connect() as conn:
        return {tuple(row) for row in conn.execute(sa.select(t.node_visit))}


def _cycle_counts(env: Env) -> dict[tuple[Any, Any], int]:
    rows = latest(env.db, t.mv_cycle_time_analytics)
    return {(r.node_id, r.team_id): r.token_count for r in rows}


def test_cycle_visits_recorded_refresh_by_refresh_equal_one_rebuild(env: Env) -> None:
    for hours in range(7 * 24, 0, -3):  # every 3 hours over the week: the events arrive
        env.refresh("dashboard_medium", NOW - timedelta(hours=hours))
    env.refresh("dashboard_medium")
    assert cycle(latest(env.db, t.mv_cycle_time_analytics)) == CYCLE
    stepped = _visits(env)
    assert len(stepped) == 7  # the window's visits only (5 at node 10, 2 at node 11)
    with env.db.begin() as conn:
        conn.execute(sa.delete(t.node_visit))
    env.refresh("dashboard_medium")  # an empty table: the whole window again
    assert _visits(env) == stepped
    assert cycle(latest(env.db, t.mv_cycle_time_analytics)) == CYCLE


def test_cycle_late_exits_are_recorded_within_the_lookback(env: Env) -> None:
    env.refresh("dashboard_medium")  # latest recorded exit: 03-10 00:01 (token 38, node 11)
    with env.db.begin() as conn:
        conn.execute(
            t.token_event.insert(),
            [  # written late; operator 105 has no team: node rows only
                event_row(50, "enter_node", None, 11, 105, "03-09 23:00"),
                event_row(50, "exit_node", 11, None, 105, "03-09 23:50"),  # 11 min before: in
                event_row(51, "enter_node", None, 11, 105, "03-09 23:00"),
                event_row(51, "exit_node", 11, None, 105, "03-09 23:45"),  # 16 min: too late
            ],
        )
    env.refresh("dashboard_medium", NOW + timedelta(minutes=5))
    assert _cycle_counts(env)[(11, None)] == 3
    with env.db.begin() as conn:
        conn.execute(sa.delete(t.node_visit))
    env.refresh("dashboard_medium", NOW + timedelta(minutes=10))
    assert _cycle_counts(env)[(11, None)] == 4


def test_live_statuses_come_from_the_settings(env: Env) -> None:
    erp = env.settings.erp.model_copy(update={"live_token_statuses": ["active"]})
    settings = env.settings.model_copy(update={"erp": erp})
    dashboard.run(make_context(settings, env.dbs, "DEFAULT", NOW, "dashboard_fast"))
    rows = flow(latest(env.db, t.mv_token_flow_summary))
    assert rows[(1, 10, 2)] == (0, 0, 2)  # waiting tokens still counted as waiting
    assert rows[(1, 11, 5)] == (10, 0, 0)
    assert (1, 10, None) not in rows  # token 3 is ready: not live, not waiting


def test_dry_run_writes_nothing_and_reports(env: Env) -> None:
    counters = [dashboard.run(env.ctx(job, dry_run=True)) for job in TIERS]
    assert [c["rows_written"] for c in counters] == [
        len(FLOW) + len(BOTTLENECKS) + len(WORKLOAD),
        len(CYCLE),
        len(TRENDS),
    ]
    with env.db.connect() as conn:
        for name in [*dashboard.TABLES, t.node_visit.name]:  # visits: recorded, rolled back
            assert (
                conn.execute(
                    sa.select(sa.func.count()).select_from(t.metadata.tables[name])
                ).scalar_one()
                == 0
            ), name


def test_a_failing_table_is_counted_and_the_others_still_refresh(env: Env) -> None:
    with env.db.begin() as conn:
        conn.execute(sa.text("DROP TABLE mv_node_bottlenecks"))
    ctx = env.ctx("dashboard_fast")
    with capture_logs() as logs:
        counters = dashboard.run(ctx)
    assert counters["errors"] == 1 and counters["tables"] == 2
    assert alert_level("dashboard_fast", counters) == "warning"
    failed = [e for e in logs if e["event"] == "dashboard_table_failed"]
    assert [e["table"] for e in failed] == ["mv_node_bottlenecks"] and failed[0]["error"]
    assert flow(latest(env.db, t.mv_token_flow_summary)) == FLOW
    assert workload(latest(env.db, t.mv_team_workload)) == WORKLOAD


class Lost:
    def check(self) -> None:
        raise LeaseLost("taken over")


def test_a_lost_lease_stops_before_writing(env: Env) -> None:
    ctx = env.ctx("dashboard_fast")
    ctx.guard = Lost()
    with pytest.raises(LeaseLost):
        dashboard.run(ctx)
    assert latest(env.db, t.mv_token_flow_summary) == []


def test_a_refresh_in_the_same_second_replaces_the_snapshot(env: Env) -> None:
    env.refresh("dashboard_fast")
    with env.db.begin() as conn:  # token 3 moves on: the second refresh must show it
        conn.execute(
            t.flow_token.update().where(t.flow_token.c.id_token == 3).values(status="active")
        )
    second = env.refresh("dashboard_fast", NOW + timedelta(microseconds=900_000))
    assert second["rows_deleted"] == len(FLOW) + len(BOTTLENECKS) + len(WORKLOAD)
    rows = latest(env.db, t.mv_token_flow_summary)
    assert len(rows) == len(FLOW) and {r.snapshot_at for r in rows} == {SNAP}
    assert bottlenecks(latest(env.db, t.mv_node_bottlenecks))[10][2] == 2


@pytest.mark.parametrize(
    "later",
    [
        datetime(2025, 3, 10, 17, 10, tzinfo=UTC),  # 03-11 00:10 in Bangkok: 03-10 is yesterday
        datetime(2025, 3, 13, 3, 0, tzinfo=UTC),  # 03-13 10:00: no refresh for three days
    ],
)
def test_trends_rewrite_open_days_and_copy_closed_ones(env: Env, later: datetime) -> None:
    env.refresh("dashboard_slow")  # at 03-10 03:30: 03-10 is still open
    new_tokens = [
        token_row(50, 1, "completed", 11, "03-09 12:00", "03-10 23:00"),  # changes 03-10
        token_row(51, 1, "active", 11, "03-05 12:00", None),  # a closed day: not recomputed
        token_row(52, 1, "active", 11, "03-11 00:05", None),  # a new day
    ]
    with env.db.begin() as conn:
        conn.execute(t.flow_token.insert(), new_tokens)
    counters = env.refresh("dashboard_slow", later)
    rows = latest(env.db, t.mv_dashboard_trends)
    local = later.astimezone(env.settings.erp.tz).replace(tzinfo=None)
    assert {r.snapshot_at for r in rows} == {local}
    expected = {k: v for k, v in TRENDS.items() if k[0] != date(2025, 2, 9)}  # out of window
    # 03-10 now has 8 (38.5 h) and 50 (35 h) completed; week 03-04..03-10: 4 / 7
    expected[(date(2025, 3, 10), "hatthasilpa", 1)] = (1, 2, D("36.75"), D("0.57"))
    expected[(date(2025, 3, 11), "hatthasilpa", 1)] = (1, 0, None, D("0.57"))
    assert trends(rows) == expected
    # the first snapshot is more than an hour older: gone, in batches of 2
    assert counters["rows_deleted"] == len(TRENDS)
    with env.db.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(t.mv_dashboard_trends))
        assert total.scalar_one() == len(expected)


@pytest.mark.parametrize(
    ("today", "previous", "first"),
    [
        (date(2025, 3, 10), None, date(2025, 2, 9)),  # nothing yet: the whole window
        (date(2025, 3, 10), datetime(2025, 3, 10, 3, 15), date(2025, 3, 9)),
        (date(2025, 3, 10), datetime(2025, 3, 9, 23, 50), date(2025, 3, 9)),
        (date(2025, 3, 10), datetime(2025, 3, 6, 12, 0), date(2025, 3, 6)),  # a gap
        (date(2025, 3, 10), datetime(2025, 1, 1, 0, 0), date(2025, 2, 9)),
        (date(2025, 3, 10), datetime(2025, 3, 12, 0, 0), date(2025, 3, 9)),  # clock set back
    ],
)
def test_trend_days_recomputed(today: date, previous: datetime | None, first: date) -> None:
    m = Moment(datetime.combine(today, datetime.min.time()), ())
    assert rewrite_from(m, previous) == first


def snapshot_rows(table: sa.Table, at: datetime, n: int) -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        c.name: 0 for c in table.columns if not c.nullable and c.name not in ("id", "snapshot_at")
    }
    if "period_start" in base:
        base.update(period_start=at, period_end=at)
    if "period_date" in base:
        base.update(period_date=date(2025, 3, 9), production_type="classic")
    return [dict(base, snapshot_at=at) for _ in range(n)]


@pytest.mark.parametrize(
    ("job", "name", "keep"),
    [
        ("dashboard_fast", "mv_token_flow_summary", timedelta(hours=24)),
        ("dashboard_fast", "mv_team_workload", timedelta(hours=24)),
        ("dashboard_medium", "mv_cycle_time_analytics", timedelta(days=7)),
        ("dashboard_slow", "mv_dashboard_trends", timedelta(hours=1)),
    ],
)
def test_retention_keeps_exactly_the_window(env: Env, job: str, name: str, keep: timedelta) -> None:
    table = t.metadata.tables[name]
    with env.db.begin() as conn:
        conn.execute(
            table.insert(),
            snapshot_rows(table, SNAP - keep, 3)
            + snapshot_rows(table, SNAP - keep - timedelta(seconds=1), 5)
            + snapshot_rows(table, SNAP - timedelta(days=40), 1),
        )
    counters = env.refresh(job)
    assert counters["rows_deleted"] == 6  # in batches of 2
    with env.db.connect() as conn:
        left = conn.execute(
            sa.select(table.c.snapshot_at, sa.func.count()).group_by(table.c.snapshot_at)
        ).all()
    by_time: dict[Any, Any] = {row[0]: row[1] for row in left}
    assert by_time.pop(SNAP) > 0  # the new snapshot
    assert by_time == {SNAP - keep: 3}


def test_trend_rows_before_the_window_go_even_in_recent_snapshots(env: Env) -> None:
    table = t.mv_dashboard_trends
    rows = snapshot_rows(table, SNAP - timedelta(minutes=15), 2)
    rows[0]["period_date"] = date(2025, 2, 8)  # one day before the 30 days
    with env.db.begin() as conn:
        conn.execute(table.insert(), rows)
    assert env.refresh("dashboard_slow")["rows_deleted"] == 1
    with env.db.connect() as conn:
        dates: set[date] = set(conn.execute(sa.select(table.c.period_date)).scalars())
    assert date(2025, 2, 8) not in dates and date(2025, 3, 9) in dates


def test_a_reader_never_sees_a_partial_snapshot(env: Env) -> None:
    env.refresh("dashboard_fast")
    env.refresh("dashboard_slow")  # from the second refresh on, trends also copies rows
    expected = {t.mv_token_flow_summary: (flow, FLOW), t.mv_dashboard_trends: (trends, TRENDS)}
    reads: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for table, (shape, want) in expected.items():
                rows = latest(env.db, table)
                reads.append(len(rows))
                try:
                    assert shape(rows) == want  # keyed() also refuses duplicate keys
                except AssertionError:
                    problems.append(f"{table.name}: {len(rows)} rows")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):  # every other refresh in the same second: replace, not add
            now = NOW + timedelta(seconds=i // 2, microseconds=(i % 2) * 500_000)
            env.refresh("dashboard_fast", now)
            env.refresh("dashboard_slow", now)
    finally:
        stop.set()
        thread.join()
    assert not problems
    assert len(reads) > 10


def test_a_tier_with_a_table_it_cannot_write_is_partial_not_ok(env: Env) -> None:
    """An install whose table lacks a column: the run says so instead of 'ok'."""
    with env.db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE mv_cycle_time_analytics DROP COLUMN p50_minutes"))
    runner = Runner(env.settings, BY_NAME, FixedClock(NOW))
    try:
        result = runner.tick("dashboard_medium", NOW, only="DEFAULT")
    finally:
        runner.close()
    outcome = result.tenants["DEFAULT"]
    assert outcome.status == "partial" and result.failed
    assert outcome.error is not None
    assert outcome.error.startswith("table mv_cycle_time_analytics: ")
    assert "p50_minutes" in outcome.error
    with env.dbs.coordination.connect() as conn:
        row = conn.execute(sa.select(own.run.c.status, own.run.c.error)).one()
    assert tuple(row) == ("partial", outcome.error)
