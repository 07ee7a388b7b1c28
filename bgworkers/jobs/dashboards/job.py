"""dashboard_fast / dashboard_medium / dashboard_slow: refresh the mv_* summary tables.

The three jobs share `run`; each refreshes the tables listed in its settings
(`[jobs.dashboard_*] tables`).  For one tenant and one table a refresh is:

1. one transaction that writes a whole new snapshot with set-based
   INSERT ... SELECT statements, all rows sharing one `snapshot_at` (the ERP's
   naive local time, whole seconds).  Rows at or after that time (a refresh in
   the same second, or a clock set back) are deleted in the same transaction,
   so the newest `snapshot_at` always holds exactly one complete snapshot and a
   reader of `WHERE snapshot_at = (SELECT MAX(snapshot_at) ...)` never sees a
   partial or doubled one;
2. retention: rows past the table's window are deleted in batches of
   `delete_batch` rows, one short transaction each.

A table that fails (a database error) is logged, counted in `errors`, and the
next table still runs.  When the failure is the schema's (a table or column the
refresh uses is missing), the error names the database, the table, the column
and the command that provides it.  Losing the lease stops the run before its next write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.db.dialects import is_sqlite
from bgworkers.engine.job import Counters, JobContext
from bgworkers.engine.logs import still_running
from bgworkers.jobs.dashboards import cycle, now, trends
from bgworkers.jobs.dashboards.sql import Moment
from bgworkers.schema import needs, tenant
from bgworkers.settings import DashboardTierSettings

COUNTERS = ("tables", "rows_written", "rows_deleted", "errors")
#: The settings of the tier being refreshed.
Tier = TypeVar("Tier", bound=DashboardTierSettings)

Build = Callable[[Moment, Connection], list[Insert]]
Expired = Callable[[Moment], ColumnElement[bool]]


@dataclass(frozen=True)
class SummaryTable:
    table: Table
    build: Build
    expired: Expired
    #: writes what `build` reads, in its own transaction just before the snapshot's
    #: (InnoDB reading index pages that its own open transaction changed checks
    #: every row there against the table: seconds, not milliseconds)
    prepare: Callable[[Moment, Connection], None] | None = None
    #: the tables the refresh reads (checked when it fails)
    reads: tuple[Table, ...] = ()


def _older_than(table: Table, keep: timedelta) -> Expired:
    return lambda m: table.c.snapshot_at < m.snapshot_at - keep


def _now(build: Callable[[Moment], list[Insert]]) -> Build:
    """Statements that see the moment only through `Moment.at`: built once per list of
    live statuses (building them costs more than running them on a small tenant), then
    run with each moment's parameters."""
    built: dict[tuple[str, ...], tuple[list[Insert], dict[str, timedelta]]] = {}

    def statements(m: Moment, _conn: Connection) -> list[Insert]:
        if m.live_statuses not in built:
            template = Moment(m.snapshot_at, m.live_statuses)
            built[m.live_statuses] = build(template), template.shifts
        inserts, shifts = built[m.live_statuses]
        m.adopt(shifts)
        return inserts

    return statements


_NOW_READS = (
    tenant.flow_token,
    tenant.job_graph_instance,
    tenant.token_assignment,
    tenant.team_member,
    tenant.routing_node,
    tenant.team,
    tenant.token_event,
)

TABLES: dict[str, SummaryTable] = {
    "mv_token_flow_summary": SummaryTable(
        tenant.mv_token_flow_summary,
        _now(now.token_flow_summary),
        _older_than(tenant.mv_token_flow_summary, now.RECENT),
        reads=_NOW_READS,
    ),
    "mv_node_bottlenecks": SummaryTable(
        tenant.mv_node_bottlenecks,
        _now(now.node_bottlenecks),
        _older_than(tenant.mv_node_bottlenecks, now.RECENT),
        reads=_NOW_READS,
    ),
    "mv_team_workload": SummaryTable(
        tenant.mv_team_workload,
        _now(now.team_workload),
        _older_than(tenant.mv_team_workload, now.RECENT),
        reads=_NOW_READS,
    ),
    "mv_cycle_time_analytics": SummaryTable(
        tenant.mv_cycle_time_analytics,
        cycle.cycle_time_analytics,
        _older_than(tenant.mv_cycle_time_analytics, timedelta(days=cycle.CYCLE_DAYS)),
        prepare=cycle.record_visits,
        reads=(tenant.token_event, tenant.team_member, tenant.node_visit),
    ),
    "mv_dashboard_trends": SummaryTable(
        tenant.mv_dashboard_trends,
        trends.dashboard_trends,
        trends.trends_expired,
        reads=(tenant.flow_token, tenant.job_graph_instance, tenant.routing_graph),
    ),
}


def moment(ctx: JobContext[Tier]) -> Moment:
    return Moment(
        snapshot_at=ctx.erp_now.replace(microsecond=0),
        live_statuses=tuple(ctx.settings.erp.live_token_statuses),
    )


def run(ctx: JobContext[Tier]) -> Counters:
    settings = ctx.job_settings
    m = moment(ctx)
    counters = dict.fromkeys(COUNTERS, 0)
    with ExitStack() as sessions:  # one for the run's tables, a new one after an error
        conn: Connection | None = None
        for name in settings.tables:
            started = time.monotonic()
            try:
                if conn is None:
                    conn = sessions.enter_context(session(ctx.db))
                written, deleted = refresh(ctx, conn, TABLES[name], m, settings.delete_batch)
            except SQLAlchemyError as exc:
                sessions.close()
                conn = None
                counters["errors"] += 1
                error = schema_error(ctx, TABLES[name]) or error_line(exc)
                ctx.part_failed(f"table {name}", error)
                ctx.log.error("dashboard_table_failed", table=name, error=error, ms=_ms(started))
                continue
            counters["tables"] += 1
            counters["rows_written"] += written
            counters["rows_deleted"] += deleted
            ctx.log.info(
                "dashboard_table_refreshed",
                table=name,
                rows=written,
                deleted=deleted,
                ms=_ms(started),
                snapshot_at=m.snapshot_at.isoformat(sep=" "),
                dry_run=ctx.dry_run,
            )
    return counters


def schema_error(ctx: JobContext[Tier], spec: SummaryTable) -> str | None:
    """After a failure: the tables or columns of this refresh the database lacks, if any,
    e.g. "tenant DEFAULT database bgerp_t_default: table mv_cycle_time_analytics has
    no column p50_minutes; run `bgworkers db upgrade`"."""
    try:
        found = needs.problems(ctx.db, (spec.table, *spec.reads))
    except SQLAlchemyError:
        return None  # the database itself is the problem: its own error says so
    if not found:
        return None
    return f"{needs.describe(ctx.db, f'tenant {ctx.tenant.code}')}: {'; '.join(found)}"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def refresh(
    ctx: JobContext[Tier], conn: Connection, spec: SummaryTable, m: Moment, batch: int
) -> tuple[int, int]:
    """One table for one tenant, in a `session`: (rows written, rows deleted).  Dry run:
    what it would be."""
    if ctx.dry_run:
        return _would(conn, spec, m)
    ctx.check_lease()
    if spec.prepare is not None:
        # the first cycle-time refresh records a week of visits: tens of seconds
        log = ctx.log.bind(job=ctx.job, tenant=ctx.tenant.code)
        with still_running(log, "dashboard_table_preparing", table=spec.table.name), conn.begin():
            spec.prepare(m, conn)
        ctx.check_lease()
    with conn.begin():
        replaced = conn.execute(
            delete(spec.table).where(spec.table.c.snapshot_at >= m.snapshot_at)
        ).rowcount
        inserts = spec.build(m, conn)
        written = sum(conn.execute(stmt, m.params()).rowcount for stmt in inserts)
    return written, replaced + purge(ctx, conn, spec, m, batch)


def purge(
    ctx: JobContext[Tier], conn: Connection, spec: SummaryTable, m: Moment, batch: int
) -> int:
    """Delete expired rows, at most `batch` per statement and transaction."""
    table, expired = spec.table, spec.expired(m)
    # MySQL refuses LIMIT directly in an IN subquery and a subquery on the table being
    # deleted from; the ids go through a derived table, which it materializes first.
    ids = select(table.c.id).where(expired).limit(batch).subquery("expired_ids")
    stmt = delete(table).where(table.c.id.in_(select(ids.c.id)))
    total = 0
    while True:
        ctx.check_lease()
        with conn.begin():
            deleted = conn.execute(stmt).rowcount
        total += deleted
        if deleted < batch:
            return total


#: MySQL/MariaDB in-memory temporary table limit for the refresh's own session (the
#: server default, often 16 MB, sends the window sorts of a big tenant to disk)
WORK_MEMORY = 256 * 1024 * 1024
#: ... and the longest GROUP_CONCAT (a node's visit durations in order; the default
#: 1 MB would cut them short), the largest the server accepts
LIST_MAX = 4294967295


@contextmanager
def session(engine: Engine) -> Iterator[Connection]:
    """A connection for one refresh.  On MySQL/MariaDB: READ COMMITTED, so that the
    INSERT ... SELECT reads the ERP tables without locking them (REPEATABLE READ
    would hold shared locks on every scanned source row until commit),
    WORK_MEMORY for temporary tables and LIST_MAX for GROUP_CONCAT, given back
    when done."""
    with engine.connect() as conn:
        if is_sqlite(engine.url):
            yield conn
            return
        conn.execution_options(isolation_level="READ COMMITTED")
        conn.exec_driver_sql(
            f"SET SESSION tmp_table_size = {WORK_MEMORY}, max_heap_table_size = {WORK_MEMORY}, "
            f"group_concat_max_len = {LIST_MAX}"
        )
        conn.commit()
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                conn.exec_driver_sql(
                    "SET SESSION tmp_table_size = DEFAULT, max_heap_table_size = DEFAULT, "
                    "group_concat_max_len = DEFAULT"
                )
                conn.commit()
            except SQLAlchemyError:
                conn.invalidate()  # never hand a session with odd settings back to the pool


def _would(conn: Connection, spec: SummaryTable, m: Moment) -> tuple[int, int]:
    """Counts from plain reads; `prepare` writes in a transaction that is rolled back."""
    with conn.begin() as transaction:
        if spec.prepare is not None:
            spec.prepare(m, conn)
        written = 0
        for stmt in spec.build(m, conn):
            rows = stmt.select
            assert rows is not None  # every statement is INSERT ... SELECT
            written += conn.execute(
                select(func.count()).select_from(rows.subquery()), m.params()
            ).scalar_one()
        expired = conn.execute(
            select(func.count()).select_from(spec.table).where(spec.expired(m))
        ).scalar_one()
        transaction.rollback()
    return written, expired
