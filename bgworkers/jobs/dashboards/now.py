"""The three "now" tables: mv_token_flow_summary, mv_node_bottlenecks, mv_team_workload.

Their statements see the refresh moment only through `Moment.at`, so that they
are built once and run for every tenant and moment with its parameters.

Each is one INSERT ... SELECT over the live tokens (and, for the flow summary,
the tokens completed in the last 24 h).  The team of a token is the team of
the member of its open assignment (see dashboard_sql.with_team).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Insert, Numeric, and_, case, func, literal_column, or_, select

from bgworkers.jobs.dashboards.sql import (
    Moment,
    cents,
    flag,
    insert_snapshot,
    seconds_between,
    with_team,
)
from bgworkers.schema.tenant import (
    flow_token,
    job_graph_instance,
    mv_node_bottlenecks,
    mv_team_workload,
    mv_token_flow_summary,
    routing_node,
    team,
    team_member,
    token_event,
)

QUEUED = ("ready", "waiting")  # mv_node_bottlenecks: the queue in front of a node
TEAM_WAITING = ("ready", "waiting", "paused")  # mv_team_workload.waiting_tokens
RECENT = timedelta(hours=24)  # completed_count window; retention of the fast tables


def token_flow_summary(m: Moment) -> list[Insert]:
    """Per (graph, node, team): live tokens, waiting tokens, tokens completed in 24 h."""
    t, gi = flow_token, job_graph_instance
    completed = and_(
        t.c.status == "completed", t.c.completed_at > m.at(-RECENT), t.c.completed_at <= m.at()
    )
    which = or_(t.c.status.in_((*m.live_statuses, "waiting")), completed)
    joined, id_team = with_team(t.outerjoin(gi, gi.c.id_instance == t.c.id_instance), which)
    rows = (
        select(
            m.at(),
            gi.c.id_graph,
            t.c.current_node_id,
            id_team,
            func.sum(flag(t.c.status.in_(m.live_statuses))),
            func.sum(flag(completed)),
            func.sum(flag(t.c.status == "waiting")),
        )
        .select_from(joined)
        .where(which)
        .group_by(gi.c.id_graph, t.c.current_node_id, id_team)
    )
    return [
        insert_snapshot(
            mv_token_flow_summary,
            rows,
        )
    ]


def node_bottlenecks(m: Moment) -> list[Insert]:
    """Per node with a queue: queue depth, average wait, total waiting token-hours."""
    t, e, n = flow_token, token_event, routing_node
    # the latest entry at its node, read backwards along the token's index
    entered = (
        select(e.c.event_time)
        .where(
            e.c.id_token == t.c.id_token,
            e.c.event_type == "enter_node",
            e.c.to_node_id == t.c.current_node_id,
            e.c.event_time <= m.at(),
        )
        .order_by(e.c.event_time.desc())
        .limit(1)
        .scalar_subquery()
    )
    queued = (
        select(
            t.c.current_node_id.label("node_id"),
            seconds_between(func.coalesce(entered, t.c.spawned_at), m.at()).label("wait_s"),
        )
        .where(t.c.status.in_(QUEUED), t.c.current_node_id.is_not(None))
        # one row per token: grouping makes the database materialize this subquery, so
        # the lookup runs once per token and not once for each use of wait_s below
        .group_by(t.c.id_token, t.c.current_node_id, t.c.spawned_at)
        .subquery("queued")
    )
    wait = case((queued.c.wait_s > 0, queued.c.wait_s), else_=0)  # spawned in the future: 0
    per_node = (
        select(queued.c.node_id, func.count().label("depth"), func.sum(wait).label("total"))
        .group_by(queued.c.node_id)
        .subquery("per_node")
    )
    q = per_node.c
    rows = select(
        m.at(),
        q.node_id,
        n.c.node_code,
        n.c.node_name,
        q.depth,
        cents(q.total, 60 * q.depth),
        cents(q.total, 3600),
    ).select_from(per_node.outerjoin(n, n.c.id_node == q.node_id))
    return [
        insert_snapshot(
            mv_node_bottlenecks,
            rows,
        )
    ]


def team_workload(m: Moment) -> list[Insert]:
    """Per active team: its active and waiting tokens, and load per active member."""
    t, tm = flow_token, team_member
    which = t.c.status.in_(("active", *TEAM_WAITING))
    joined, id_team = with_team(t, which)
    per_team = (
        select(
            id_team.label("id_team"),
            func.sum(flag(t.c.status == "active")).label("active"),
            func.sum(flag(t.c.status.in_(TEAM_WAITING))).label("waiting"),
        )
        .select_from(joined)
        .where(which, id_team.is_not(None))
        .group_by(id_team)
        .subquery("per_team")
    )
    members = (
        select(tm.c.id_team, func.count().label("n"))
        .where(tm.c.active == 1)
        .group_by(tm.c.id_team)
        .subquery("members")
    )
    active = func.coalesce(per_team.c.active, 0)
    n_members = func.coalesce(members.c.n, 0)
    cap = literal_column("999.99", Numeric(5, 2))
    # 100 * active / members, capped (also when no member is active: infinite load)
    load = case(
        (active == 0, 0),
        (10000 * active > 99999 * n_members, cap),
        else_=cents(100 * active, n_members),
    )
    rows = (
        select(
            m.at(),
            team.c.id_team,
            team.c.name,
            team.c.team_category,
            active,
            func.coalesce(per_team.c.waiting, 0),
            load,
        )
        .select_from(
            team.outerjoin(per_team, per_team.c.id_team == team.c.id_team).outerjoin(
                members, members.c.id_team == team.c.id_team
            )
        )
        .where(team.c.active == 1)
    )
    return [
        insert_snapshot(
            mv_team_workload,
            rows,
        )
    ]
