"""mv_cycle_time_analytics: node visit durations of the last 7 ERP-local days.

A visit is an `exit_node` event whose previous enter/exit event of the same token
at the same node (ordered by event_time, then id_event) is an `enter_node`; its
duration runs from that enter to the exit.  Visits that ended between local
midnight six days ago and now count: one row per node (team NULL) and one per
team of the exiting operator (node NULL; operators without a team are in the
node rows only).  token_count is the number of visits; p50/p95 interpolate like
PERCENTILE_CONT; all figures are minutes, rounded half away from zero.

Pairing every event of seven days again at each refresh would cost seconds on a
big tenant, so visits are recorded once in the project's table `bgw_node_visit`
(`record_visits`, committed just before the snapshot): each refresh pairs again
the exits from LOOKBACK before the latest recorded exit (all the window when the
table is empty) and drops visits that left the window.  An exit whose
event_time is more than LOOKBACK before an exit already recorded is not seen;
emptying the table makes the next refresh record the window again.  The team of
a visit is that of its operator when the visit was recorded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Insert,
    Select,
    Subquery,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
)

from bgworkers.db.dialects import is_mysql
from bgworkers.jobs.dashboards.sql import (
    Moment,
    cents,
    flag,
    idiv,
    insert_snapshot,
    member_team,
    midnight,
    nth,
    ordered_list,
    seconds_between,
)
from bgworkers.schema.tenant import mv_cycle_time_analytics, node_visit, token_event

CYCLE_DAYS = 7  # visits that ended today or in the 6 days before; also the retention
#: exits paired again at each refresh, before the latest one recorded (late events)
LOOKBACK = timedelta(minutes=15)


def cycle_period(m: Moment) -> tuple[datetime, datetime]:
    return midnight(m.today - timedelta(days=CYCLE_DAYS - 1)), m.snapshot_at


def visits(since: datetime, end: datetime) -> Subquery:
    """(exit_event_id, node_id, operator_user_id, exited_at, d seconds) of every visit
    whose exit is in [since, end].

    The pairing (LAG per token and node) reads the enter/exit events up to `end`
    of the tokens that exited a node in that span.  Rows are kept narrow (is_exit
    instead of event_type) so that the window sort stays in memory.
    """
    e = token_event
    node = case((e.c.event_type == "enter_node", e.c.to_node_id), else_=e.c.from_node_id)
    exited = select(e.c.id_token).where(
        e.c.event_type == "exit_node", e.c.event_time >= since, e.c.event_time <= end
    )
    ev = (
        select(
            e.c.id_event,
            e.c.id_token,
            e.c.event_time,
            e.c.operator_user_id,
            node.label("node_id"),
            flag(e.c.event_type == "exit_node").label("is_exit"),
        )
        .where(
            e.c.event_type.in_(("enter_node", "exit_node")),
            e.c.event_time <= end,
            e.c.id_token.in_(exited),
        )
        .subquery("ev")
    )
    token_node, order = (ev.c.id_token, ev.c.node_id), (ev.c.event_time, ev.c.id_event)
    paired = (
        select(
            ev.c.id_event,
            ev.c.node_id,
            ev.c.is_exit,
            ev.c.event_time,
            ev.c.operator_user_id,
            func.lag(ev.c.is_exit)
            .over(partition_by=token_node, order_by=order)
            .label("prev_is_exit"),
            func.lag(ev.c.event_time)
            .over(partition_by=token_node, order_by=order)
            .label("prev_time"),
        )
        .where(ev.c.node_id.is_not(None))
        .subquery("paired")
    )
    p = paired.c
    return (
        select(
            p.id_event.label("exit_event_id"),
            p.node_id,
            p.operator_user_id,
            p.event_time.label("exited_at"),
            seconds_between(p.prev_time, p.event_time).label("d"),
        )
        .where(p.is_exit == 1, p.prev_is_exit == 0, p.event_time >= since)
        .subquery("visits")
    )


def record_visits(m: Moment, conn: Connection) -> None:
    """Bring `bgw_node_visit` up to date for this refresh's window (see the module doc)."""
    start, end = cycle_period(m)
    v = node_visit
    latest = conn.execute(select(func.max(v.c.exited_at))).scalar_one_or_none()
    since = start if latest is None else max(start, min(latest, end) - LOOKBACK)
    conn.execute(delete(v).where(or_(v.c.exited_at >= since, v.c.exited_at < start)))
    new, mt = visits(since, end), member_team()
    conn.execute(
        insert(v).from_select(
            ["exit_event_id", "node_id", "team_id", "exited_at", "seconds"],
            select(new.c.exit_event_id, new.c.node_id, mt.c.id_team, new.c.exited_at, new.c.d)
            .select_from(new.outerjoin(mt, mt.c.id_member == new.c.operator_user_id))
            .where(new.c.exited_at <= end),
        )
    )


def _weight(pct: int, rn: ColumnElement[Any], n: ColumnElement[Any]) -> ColumnElement[Any]:
    """Weight x100 of the rn-th smallest of n values in PERCENTILE_CONT(pct / 100).

    The percentile sits at 0-based position h = pct * (n - 1) / 100, between the
    values at floor(h) and floor(h) + 1, weighted 1 - frac and frac.  In
    integers: t = pct * (n - 1) = 100 * h.
    """
    t = pct * (n - 1)
    return case(
        (and_(100 * (rn - 1) <= t, t < 100 * rn), 100 - (t - 100 * (rn - 1))),
        (and_(100 * (rn - 2) <= t, t < 100 * (rn - 1)), t - 100 * (rn - 2)),
        else_=0,
    )


def _percentile(pct: int, ordered: ColumnElement[Any], n: ColumnElement[Any]) -> Any:
    """PERCENTILE_CONT(pct / 100) x100 of n values listed in order: exact, in integers.

    Position h = pct * (n - 1) / 100 lies between the values at floor(h) and
    floor(h) + 1 (0-based); t = 100 * h = pct * (n - 1).
    """
    t = pct * (n - 1)
    at = idiv(t, 100)
    low, high = nth(ordered, at), nth(ordered, func.least(at + 1, n - 1))
    return 100 * low + (t - 100 * at) * (high - low)


def _group_stats(group: Column[Any], native: bool) -> Subquery:
    """(grp, n, p50 x100, p95 x100, total) of the recorded visits' seconds per `group`.

    After `record_visits` the table holds exactly the window's visits.  On
    MySQL/MariaDB each group's durations come in order from the (group, seconds)
    index as one list (`ordered_list`), and the percentiles are read from it: no
    sort, no window.  SQLite ranks them with ROW_NUMBER and weights instead.
    """
    v = node_visit
    n, total = func.count().label("n"), func.sum(v.c.seconds).label("total")
    if native:
        g = (
            select(group.label("grp"), n, total, ordered_list(v.c.seconds).label("ordered"))
            .where(group.is_not(None))
            .group_by(group)
            .subquery("ordered")
        ).c
        return select(
            g.grp,
            g.n,
            _percentile(50, g.ordered, g.n).label("p50"),
            _percentile(95, g.ordered, g.n).label("p95"),
            g.total,
        ).subquery("stats")
    ranked = (
        select(
            group.label("grp"),
            v.c.seconds.label("d"),
            func.row_number().over(partition_by=group, order_by=v.c.seconds).label("rn"),
            func.count().over(partition_by=group).label("n"),
        )
        .where(group.is_not(None))
        .subquery("ranked")
    )
    r = ranked.c
    return (
        select(
            r.grp,
            n,
            func.sum(r.d * _weight(50, r.rn, r.n)).label("p50"),
            func.sum(r.d * _weight(95, r.rn, r.n)).label("p95"),
            func.sum(r.d).label("total"),
        )
        .group_by(r.grp)
        .subquery("stats")
    )


def cycle_time_analytics(m: Moment, conn: Connection) -> list[Insert]:
    """One INSERT of the node rows, one of the team rows, from `bgw_node_visit`."""
    start, end = cycle_period(m)
    native = is_mysql(conn)

    def rows(group: Column[Any], by_node: bool) -> Select[Any]:
        g = _group_stats(group, native).c
        return select(
            m.at(),
            g.grp if by_node else literal(None),
            literal(None) if by_node else g.grp,
            literal(start, DateTime()),
            literal(end, DateTime()),
            g.n,
            cents(g.p50, 6000),
            cents(g.p95, 6000),
            cents(g.total, 60 * g.n),
        )

    return [
        insert_snapshot(mv_cycle_time_analytics, rows(node_visit.c.node_id, True)),
        insert_snapshot(mv_cycle_time_analytics, rows(node_visit.c.team_id, False)),
    ]
