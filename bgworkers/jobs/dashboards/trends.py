"""mv_dashboard_trends: per ERP-local day, production type and graph, over 30 days.

Per (day, production type, graph) with at least one token spawned or completed
that day: tokens spawned, tokens completed, average lead time (completed_at -
spawned_at, hours) of the tokens completed that day, and throughput_per_day =
completions of that day and the 6 before / 7.  The production type is the graph
instance's, else the routing graph's ('unknown' if neither is known).

A refresh recomputes the open days (yesterday and today, or from the day of
the previous snapshot when that is older; all 30 days when there is none) and
copies the closed days from the previous snapshot, so that every snapshot holds
the whole window and a reader of the latest snapshot sees all 30 days.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    Insert,
    Integer,
    case,
    func,
    literal_column,
    or_,
    select,
    union_all,
)

from bgworkers.jobs.dashboards.sql import (
    Moment,
    cents,
    day_number,
    insert_snapshot,
    midnight,
    seconds_between,
    snapshot_columns,
)
from bgworkers.schema.tenant import (
    flow_token,
    job_graph_instance,
    mv_dashboard_trends,
    routing_graph,
)

TREND_DAYS = 30  # period_date kept: today and the 29 days before
TREND_WEEK = 7  # throughput_per_day: completions of the day and the 6 before, / 7
#: superseded snapshots stay this long for readers still on them, then go
TREND_GRACE = timedelta(hours=1)


def trend_window(m: Moment) -> date:
    """The oldest period_date kept."""
    return m.today - timedelta(days=TREND_DAYS - 1)


def rewrite_from(m: Moment, previous: datetime | None) -> date:
    """First day recomputed: yesterday, or earlier when the previous snapshot is older
    (its day and the days after it were still open then); the whole window when none."""
    oldest = trend_window(m)
    if previous is None:
        return oldest
    return max(oldest, min(m.today - timedelta(days=1), previous.date()))


def dashboard_trends(m: Moment, conn: Connection) -> list[Insert]:
    """Recompute the open days from the source, copy the closed ones from the last snapshot."""
    tr = mv_dashboard_trends
    previous = conn.execute(
        select(func.max(tr.c.snapshot_at)).where(tr.c.snapshot_at < m.snapshot_at)
    ).scalar()
    first = rewrite_from(m, previous)
    s = tr.c
    columns = snapshot_columns(tr)
    inserts = [insert_snapshot(tr, _daily_rows(m, first))]
    if previous is not None and first > trend_window(m):
        kept = select(m.at(), *columns[1:]).where(
            s.snapshot_at == previous, s.period_date >= trend_window(m), s.period_date < first
        )
        inserts.append(insert_snapshot(tr, kept))
    return inserts


def trends_expired(m: Moment) -> ColumnElement[bool]:
    s = mv_dashboard_trends.c
    return or_(s.snapshot_at < m.snapshot_at - TREND_GRACE, s.period_date < trend_window(m))


def _day(at: ColumnElement[datetime]) -> ColumnElement[date]:
    """The ERP-local calendar day of a naive ERP-local timestamp."""
    return func.date(at, type_=Date())


def _daily_rows(m: Moment, first: date) -> Any:
    t, gi, g = flow_token, job_graph_instance, routing_graph
    source = t.join(gi, gi.c.id_instance == t.c.id_instance).outerjoin(
        g, g.c.id_graph == gi.c.id_graph
    )
    ptype = func.coalesce(
        func.nullif(gi.c.production_type, ""), func.nullif(g.c.production_type, ""), "unknown"
    )
    end = midnight(m.today + timedelta(days=1))
    one: ColumnElement[int] = literal_column("1", Integer())
    zero: ColumnElement[int] = literal_column("0", Integer())
    spawned = (
        select(
            _day(t.c.spawned_at).label("d"),
            day_number(t.c.spawned_at).label("dn"),
            ptype.label("pt"),
            gi.c.id_graph.label("graph_id"),
            one.label("sp"),
            zero.label("co"),
            zero.label("lead_s"),
        )
        .select_from(source)
        .where(t.c.spawned_at >= midnight(first), t.c.spawned_at < end)
    )
    lookback = midnight(first - timedelta(days=TREND_WEEK - 1))
    completed = (
        select(
            _day(t.c.completed_at),
            day_number(t.c.completed_at),
            ptype,
            gi.c.id_graph,
            zero,
            one,
            seconds_between(t.c.spawned_at, t.c.completed_at),
        )
        .select_from(source)
        .where(t.c.status == "completed", t.c.completed_at >= lookback, t.c.completed_at < end)
    )
    u = union_all(spawned, completed).subquery("u")
    daily = (
        select(
            u.c.d,
            u.c.dn,
            u.c.pt,
            u.c.graph_id,
            func.sum(u.c.sp).label("spawned"),
            func.sum(u.c.co).label("completed"),
            func.sum(u.c.lead_s).label("lead_s"),
        )
        .group_by(u.c.d, u.c.dn, u.c.pt, u.c.graph_id)
        .subquery("daily")
    )
    week = func.sum(daily.c.completed).over(
        partition_by=(daily.c.pt, daily.c.graph_id),
        order_by=daily.c.dn,
        range_=(-(TREND_WEEK - 1), 0),
    )
    rolled = select(daily, week.label("week")).subquery("rolled")
    r = rolled.c
    return select(
        m.at(),
        r.d,
        r.pt,
        r.graph_id,
        r.spawned,
        r.completed,
        case((r.completed > 0, cents(r.lead_s, 3600 * r.completed))),
        cents(r.week, TREND_WEEK),
    ).where(r.d >= first, or_(r.spawned > 0, r.completed > 0))
