"""Dashboard refresh benchmark on MariaDB: one big tenant, each table against a plain scan.

    .venv/bin/python bench/dashboard.py [--url mysql+mysqldb://root@127.0.0.1:PORT] [--demo]

Without --url a throwaway server is started (bgworkers.demo.harness) and removed
afterwards.  With --url the databases (bgw_bench_<data>_core, bgw_bench_<data>_t_default)
are kept there, so a second run skips the data.

Data (bench/dashboard_tenant.py): 200,000 tokens of which 20,000 live, 2,000,000
token events, 100 nodes, 20 teams.  With --demo: bgworkers.demo at 200,000
serials over 30 days instead; it keeps every recent token's full history, so
it has about 6.8 M events (its knobs cannot give 20,000 live tokens with only
2 M events).  Printed: the fast tier (target <= 1 s), all five tables (target
<= 3 s), and per table the refresh against one scan of the same source rows with
the same filters, i.e. the same FROM/JOIN/WHERE counted without grouping,
windows, team attribution or writes (target <= 3x).  For mv_cycle_time_analytics
those are the token events of its 7 days: its refresh reads the visits recorded
in bgw_node_visit and pairs only the latest exits again, as every refresh after
the first does (the first, which records the whole week, is printed apart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dashboard_tenant  # bench/, the script's own directory
import sqlalchemy as sa

from bgworkers.db import ensure_database, limits
from bgworkers.demo import Profile, generate
from bgworkers.demo.harness import mariadb_server
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.job import JobContext
from bgworkers.engine.logs import get_logger
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.jobs import BY_NAME
from bgworkers.jobs.dashboards import job as dashboard
from bgworkers.jobs.dashboards.cycle import cycle_period
from bgworkers.jobs.dashboards.now import QUEUED, RECENT, TEAM_WAITING
from bgworkers.jobs.dashboards.sql import OPEN_ASSIGNMENT
from bgworkers.schema import core
from bgworkers.schema import tenant as t
from bgworkers.service import dbadmin
from bgworkers.settings import Settings, load_settings

AT = datetime(2026, 1, 15, 6, 0)  # naive UTC anchor of the demo data
PROFILE = Profile(
    serials=1000,
    span_days=30,
    max_span_days=30,
    events=2_000_000,
    graphs=6,
    nodes=100,
    teams=20,
    members=160,
)
SCALE = 200  # x 1000 serials
FAST = ("mv_token_flow_summary", "mv_node_bottlenecks", "mv_team_workload")


def settings_file(url: str, directory: Path, data: str) -> Path:
    path = directory / "bench.toml"
    path.write_text(f"""[database]
core_url = "{url}/bgw_bench_{data}_core?charset=utf8mb4"
tenant_url = "{url}/bgw_bench_{data}_t_{{code_lower}}?charset=utf8mb4"
pool_size = 4
[erp]
timezone = "Asia/Bangkok"
[logging]
level = "warning"
format = "json"
""")
    return path


def _tokens(dbs: Databases) -> int:
    try:
        with dbs.tenant("DEFAULT").connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(t.flow_token)).scalar_one()
            )
    except sa.exc.SQLAlchemyError:
        return 0


def ensure_data(settings: Settings, dbs: Databases, demo: bool) -> None:
    tokens = _tokens(dbs)
    if tokens >= dashboard_tenant.TOKENS:
        print(f"data: reusing the existing tenant ({tokens:,} tokens)")
        if dbadmin.upgrade(settings, dbs, None, False, lambda _: None):
            sys.exit("could not bring the kept databases' schema up to date")
        return
    started = time.monotonic()
    if demo:
        status = generate(
            settings,
            dbs,
            tenants=1,
            scale=SCALE,
            seed=7,
            at=AT,
            reset=True,
            out=lambda line: print("  " + line),
            profile=PROFILE,
        )
        if status:
            sys.exit(f"demo data generation failed ({status})")
    else:
        if dbadmin.init(settings, dbs, None, lambda _: None):
            sys.exit("could not create the core schema")
        with dbs.core.begin() as conn:
            conn.execute(core.organization.delete())
            conn.execute(
                core.organization.insert(),
                [
                    dict(
                        id_org=1,
                        code="DEFAULT",
                        name="Bench",
                        status="active",
                        org_serial_code="BNCH",
                    )
                ],
            )
        if dbadmin.init(settings, dbs, None, lambda _: None):
            sys.exit("could not create the tenant schema")
        local = AT.replace(tzinfo=UTC).astimezone(settings.erp.tz).replace(tzinfo=None)
        rows = dashboard_tenant.load(dbs.tenant("DEFAULT"), local)
        print("data: " + ", ".join(f"{name}={n:,}" for name, n in rows.items()))
    print(f"data: generated in {time.monotonic() - started:.0f} s")


def describe(engine: sa.Engine, live: tuple[str, ...]) -> None:
    ft = t.flow_token
    with engine.connect() as conn:

        def count(table: sa.Table, *where: Any) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(*where)
                ).scalar_one()
            )

        print(
            f"tenant: {count(ft):,} tokens ({count(ft, ft.c.status.in_(live)):,} live), "
            f"{count(t.token_event):,} token events, {count(t.token_assignment):,} "
            f"assignments, {count(t.routing_node)} nodes, {count(t.team)} teams, "
            f"{count(t.team_member)} memberships"
        )


def baselines(ctx: JobContext[Any]) -> dict[str, sa.Select[Any]]:
    """One scan of each table's source rows with the refresh's filters, nothing computed:
    a count plus a sum over columns the refresh reads, so the rows themselves are read."""
    m = dashboard.moment(ctx)
    ft, a, e, gi, g = (
        t.flow_token,
        t.token_assignment,
        t.token_event,
        t.job_graph_instance,
        t.routing_graph,
    )

    def read(*columns: Any) -> sa.Select[Any]:
        return sa.select(
            sa.func.count()
            + sum((sa.func.coalesce(sa.func.sum(c), 0) for c in columns), sa.literal(0))
        )

    open_a = sa.and_(a.c.id_token == ft.c.id_token, a.c.status.in_(OPEN_ASSIGNMENT))
    done = sa.and_(
        ft.c.status == "completed",
        ft.c.completed_at > m.snapshot_at - RECENT,
        ft.c.completed_at <= m.snapshot_at,
    )
    start, end = cycle_period(m)
    moves = e.c.event_type.in_(("enter_node", "exit_node"))
    in_progress = sa.select(ft.c.id_token).where(
        ft.c.spawned_at < start, sa.or_(ft.c.completed_at.is_(None), ft.c.completed_at >= start)
    )
    period = read(e.c.operator_user_id, e.c.id_token).where(
        moves, e.c.event_time >= start, e.c.event_time <= end
    )
    before = read(e.c.operator_user_id, e.c.id_token).where(
        moves, e.c.event_time < start, e.c.id_token.in_(in_progress)
    )
    day0 = datetime.combine(m.today - timedelta(days=29), datetime.min.time())
    day_end = datetime.combine(m.today + timedelta(days=1), datetime.min.time())
    src = ft.join(gi, gi.c.id_instance == ft.c.id_instance).outerjoin(
        g, g.c.id_graph == gi.c.id_graph
    )
    spawned = (
        read(gi.c.id_graph, g.c.id_graph)
        .select_from(src)
        .where(ft.c.spawned_at >= day0, ft.c.spawned_at < day_end)
    )
    completed = (
        read(gi.c.id_graph, g.c.id_graph)
        .select_from(src)
        .where(
            ft.c.status == "completed",
            ft.c.completed_at >= day0 - timedelta(days=6),
            ft.c.completed_at < day_end,
        )
    )
    return {
        "mv_token_flow_summary": read(gi.c.id_graph, a.c.assigned_to_user_id)
        .select_from(ft.outerjoin(gi, gi.c.id_instance == ft.c.id_instance).outerjoin(a, open_a))
        .where(sa.or_(ft.c.status.in_((*m.live_statuses, "waiting")), done)),
        "mv_node_bottlenecks": read(ft.c.current_node_id, e.c.id_event)
        .select_from(
            ft.outerjoin(
                e,
                sa.and_(
                    e.c.id_token == ft.c.id_token,
                    e.c.event_type == "enter_node",
                    e.c.to_node_id == ft.c.current_node_id,
                    e.c.event_time <= m.snapshot_at,
                ),
            )
        )
        .where(ft.c.status.in_(QUEUED), ft.c.current_node_id.is_not(None)),
        "mv_team_workload": read(a.c.assigned_to_user_id)
        .select_from(ft.outerjoin(a, open_a))
        .where(ft.c.status.in_(("active", *TEAM_WAITING))),
        "mv_cycle_time_analytics": sa.select(period.scalar_subquery() + before.scalar_subquery()),
        "mv_dashboard_trends": sa.select(spawned.scalar_subquery() + completed.scalar_subquery()),
    }


def timed(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) seconds over `repeat` runs after one warm-up."""
    action()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MariaDB server URL without a database (kept afterwards)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo", action="store_true", help="bgworkers.demo data instead")
    args = parser.parse_args()
    with mariadb_server(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(settings_file(url, Path(tmp), "demo" if args.demo else "spec"))
        dbs = Databases(settings, io_timeout=600)
        ensure_database(dbs.url(settings.database.core_url), settings.database)
        with dbs.core.begin() as conn:  # the data set is ~1 GB: keep it in memory
            conn.execute(sa.text("SET GLOBAL innodb_buffer_pool_size = 2147483648"))
        ensure_data(settings, dbs, args.demo)
        tenants, _ = discover(settings, dbs.core)
        clock = FixedClock(AT.replace(tzinfo=UTC))

        def ctx(job: str) -> JobContext[Any]:
            return BY_NAME[job].context(settings, tenants[0], dbs, clock, get_logger())

        def limit(job: str) -> float:
            return settings.jobs.get(job).run_limit.total_seconds()

        def tick(*jobs: str) -> Callable[[], object]:
            def run() -> None:
                clock.at += timedelta(minutes=1)  # a new snapshot each time, as in production
                for job in jobs:
                    with limits.limited(limit(job)):  # as the runner runs it
                        counters = dashboard.run(ctx(job))
                    assert counters["errors"] == 0, counters

            return run

        describe(dbs.tenant("DEFAULT"), tuple(settings.erp.live_token_statuses))
        with dbs.tenant("DEFAULT").begin() as conn:  # as after installation
            conn.execute(sa.delete(t.node_visit))
        started = time.perf_counter()
        tick("dashboard_medium")()
        print(
            f"first cycle-time refresh, recording the week's visits: "
            f"{time.perf_counter() - started:.3f} s (once; later refreshes add new ones)"
        )
        print(f"\nrefresh times, median (best) of {args.repeat} after a warm-up:")
        fast = timed(tick("dashboard_fast"), args.repeat)
        print(f"  fast tier, 3 tables: {fast[0]:.3f} s ({fast[1]:.3f})   target <= 1 s")
        every = timed(tick("dashboard_fast", "dashboard_medium", "dashboard_slow"), args.repeat)
        print(f"  all five tables:     {every[0]:.3f} s ({every[1]:.3f})   target <= 3 s")

        print("\nper table: refresh vs one scan of the same source rows (target ratio <= 3x)")
        scans = baselines(ctx("dashboard_fast"))
        engine = dbs.tenant("DEFAULT")
        for name, spec in dashboard.TABLES.items():
            job_ctx = ctx("dashboard_fast")

            def refresh(
                spec: dashboard.SummaryTable = spec, job_ctx: JobContext[Any] = job_ctx
            ) -> None:
                clock.at += timedelta(minutes=1)
                with limits.limited(limit("dashboard_fast")), dashboard.session(job_ctx.db) as conn:
                    dashboard.refresh(job_ctx, conn, spec, dashboard.moment(job_ctx), 5000)

            def scan(query: sa.Select[Any] = scans[name]) -> None:
                with engine.connect() as conn:
                    conn.execute(query).scalar_one()

            r, s = timed(refresh, args.repeat), timed(scan, args.repeat)
            print(
                f"  {name:<24} refresh {r[0] * 1000:7.1f} ms   scan {s[0] * 1000:7.1f} ms"
                f"   ratio {r[0] / s[0]:5.2f}x"
            )
        print("\n200 small tenants sweep: see bench/dashboard_sweep.py.")
        dbs.dispose()


if __name__ == "__main__":
    main()
