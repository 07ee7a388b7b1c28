"""mv_cycle_time_analytics: node visit durations of the last 7 ERP-local days.

A visit is an `exit_node` event whose previous enter/exit event of the same token
at the same node (ordered by event_time, then id_event) is an `enter_node`; its
duration runs from that enter to the exit.  Visits that ended between local
midnight six days ago and now count: one row per node (team NULL) and one per
team of the exiting operator (node NULL; operators without a team are in the
node rows only).  token_count is the number of visits; p50/p95 interpolate like
PERCENTILE_CONT; all figures are minutes, rounded half away from zero.

An enter_node before the period is looked for only for the tokens in progress
when the period began (flow_token: spawned before it, not completed before it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Insert,
    Subquery,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)

from bgworkers.jobs.dashboard_sql import (
    Moment,
    cents,
    flag,
    insert_snapshot,
    member_team,
    midnight,
    seconds_between,
)
from bgworkers.schema.tenant import flow_token, mv_cycle_time_analytics, token_event

CYCLE_DAYS = 7  # visits that ended today or in the 6 days before; also the retention


def cycle_period(m: Moment) -> tuple[datetime, datetime]:
    return midnight(m.today - timedelta(days=CYCLE_DAYS - 1)), m.snapshot_at


def visits(start: datetime, end: datetime) -> Subquery:
    """(node_id, operator_user_id, d seconds) of every visit whose exit is in [start, end].

    The pairing (LAG per token and node) reads the period's enter/exit events, and
    the earlier ones only of the tokens in progress when the period began (spawned
    before it, not completed before it): only their visits can have entered
    before the period.  Rows are kept narrow (is_exit instead of event_type) so
    that the window sort stays in memory.
    """
    e, t = token_event, flow_token
    node = case((e.c.event_type == "enter_node", e.c.to_node_id), else_=e.c.from_node_id)
    columns = (
        e.c.id_event,
        e.c.id_token,
        e.c.event_time,
        e.c.operator_user_id,
        node.label("node_id"),
        flag(e.c.event_type == "exit_node").label("is_exit"),
    )
    moves = e.c.event_type.in_(("enter_node", "exit_node"))
    in_progress = select(t.c.id_token).where(
        t.c.spawned_at < start, or_(t.c.completed_at.is_(None), t.c.completed_at >= start)
    )
    ev = (
        select(*columns)
        .where(moves, e.c.event_time <= end)
        .where(or_(e.c.event_time >= start, e.c.id_token.in_(in_progress)))
        .subquery("ev")
    )
    token_node, order = (ev.c.id_token, ev.c.node_id), (ev.c.event_time, ev.c.id_event)
    paired = (
        select(
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
        select(p.node_id, p.operator_user_id, seconds_between(p.prev_time, p.event_time).label("d"))
        .where(p.is_exit == 1, p.prev_is_exit == 0, p.event_time >= start)
        .subquery("visits")
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


def cycle_time_analytics(m: Moment) -> list[Insert]:
    start, end = cycle_period(m)
    v = visits(start, end)
    mt = member_team()
    # every visit twice: kind 1 grouped by node, kind 2 by team (one window pass for both)
    kinds = union_all(
        select(literal_column("1").label("kind")), select(literal_column("2"))
    ).subquery("kinds")
    groupings = case((mt.c.id_team.is_(None), 1), else_=2)  # no team: the node row only
    group = case((kinds.c.kind == 1, v.c.node_id), else_=mt.c.id_team)
    both = (
        select(kinds.c.kind, group.label("grp"), v.c.d)
        .select_from(
            v.outerjoin(mt, mt.c.id_member == v.c.operator_user_id).join(
                kinds, kinds.c.kind <= groupings
            )
        )
        .subquery("both")
    )
    part = (both.c.kind, both.c.grp)
    ranked = select(
        both.c.kind,
        both.c.grp,
        both.c.d,
        func.row_number().over(partition_by=part, order_by=both.c.d).label("rn"),
        func.count().over(partition_by=part).label("n"),
    ).subquery("ranked")
    r = ranked.c
    sums = (
        select(
            r.kind,
            r.grp,
            func.count().label("n"),
            func.sum(r.d * _weight(50, r.rn, r.n)).label("p50"),
            func.sum(r.d * _weight(95, r.rn, r.n)).label("p95"),
            func.sum(r.d).label("total"),
        )
        .group_by(r.kind, r.grp)
        .subquery("sums")
    )
    g = sums.c
    rows = select(
        m.at(),
        case((g.kind == 1, g.grp)),
        case((g.kind == 2, g.grp)),
        literal(start, DateTime()),
        literal(end, DateTime()),
        g.n,
        cents(g.p50, 6000),
        cents(g.p95, 6000),
        cents(g.total, 60 * g.n),
    )
    return [
        insert_snapshot(
            mv_cycle_time_analytics,
            rows,
        )
    ]
