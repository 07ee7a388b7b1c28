"""A small hand-built ERP tenant for the dashboard tests, and its expected summary rows.

NOW is 2025-03-09 20:30 UTC = 2025-03-10 03:30 in Asia/Bangkok: the ERP day is
already 03-10 while the UTC day is still 03-09, so every day boundary is tested
in the ERP zone.  Every expected value below is worked out by hand in a comment.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bgworkers.schema import tenant as t

NOW = datetime(2025, 3, 9, 20, 30, tzinfo=UTC)
SNAP = datetime(2025, 3, 10, 3, 30)  # naive ERP-local snapshot_at


def at(text: str) -> datetime:
    """'MM-DD HH:MM[:SS]' in 2025, naive ERP-local."""
    day, clock = text.split()
    month, dom = day.split("-")
    parts = [int(p) for p in clock.split(":")] + [0]
    return datetime(2025, int(month), int(dom), parts[0], parts[1], parts[2])


def D(text: str) -> Decimal:
    return Decimal(text)


GRAPHS = [(1, "G1", "Bags", "hatthasilpa"), (2, "G2", "Belts", "classic")]
NODES = [(10, 1, "CUT", "Cutting"), (11, 1, "SEW", "Sewing"), (20, 2, "PACK", "Packing")]
TEAMS = [
    (1, "A", "Alpha", "sewing", 1),
    (2, "B", "Bravo", "cutting", 1),
    (3, "C", "Charlie", None, 0),
    (4, "D", "Delta", "qc", 1),
    (5, "E", "Echo", "edge", 1),
]
MEMBERS = [  # (team, user, active)
    (2, 100, 1),
    (1, 100, 1),  # user 100: teams 2 and 1 -> lowest: 1
    (1, 101, 0),
    (2, 101, 1),  # user 101: team 1 inactive -> 2
    (3, 102, 1),  # user 102: only team 3 (an inactive team; the membership is active) -> 3
    (2, 104, 1),  # user 104 -> 2; user 103 has no membership -> NULL
    (4, 105, 0),  # user 105: inactive membership only -> NULL; Delta has no active member
    (5, 106, 1),
]
# instance: (id, graph, production_type); I2 has none: the routing graph's "classic" applies
# I4's graph 3 has no routing_graph row and I4 no type: "unknown"
INSTANCES = [(1, 1, "hatthasilpa"), (2, 2, None), (3, 1, "hybrid"), (4, 3, None)]
TOKENS = [  # (id, instance, status, node, spawned_at, completed_at)
    (1, 1, "active", 10, "03-09 08:00", None),
    (2, 1, "waiting", 10, "03-09 09:00", None),
    (3, 1, "ready", 10, "03-09 10:00", None),
    (4, 1, "paused", 11, "03-09 11:00", None),
    (5, 1, "waiting", 11, "03-09 12:00", None),
    (6, 2, "active", 20, "03-09 13:00", None),
    (7, 2, "ready", 99, "03-10 03:45", None),  # node 99 is not in routing_node; spawned later
    (8, 1, "completed", 11, "03-08 10:00", "03-10 00:30"),  # 03-10 in Bangkok, 03-09 in UTC
    (9, 1, "completed", 11, "03-08 03:30", "03-09 03:30"),  # exactly 24 h ago: not "last 24 h"
    (10, 1, "completed", 11, "03-09 00:00", "03-09 23:59:59"),
    (11, 2, "scrapped", 20, "03-08 12:00", None),
    (12, 1, "active", None, "03-10 00:00", None),
    (13, 3, "waiting", 10, "03-09 23:59:59", None),
    (14, 2, "active", 20, "03-09 14:00", None),
    (15, 1, "active", 11, "03-09 15:00", None),
    *[(i, 1, "active", 11, "03-01 09:00", None) for i in range(16, 26)],  # Echo's ten tokens
    (26, 2, "completed", 20, "03-02 08:00", "03-04 08:00"),
    (27, 2, "completed", 20, "03-03 08:00", "03-04 20:00"),
    (28, 1, "completed", 11, "02-01 00:00", "02-09 12:00"),
    (29, 1, "completed", 11, "02-01 00:00", "02-08 23:00"),
    # the tokens of the node visits below: scrapped long before the trend window (their
    # status and dates matter nowhere else); token 33 was in progress when the period began
    *[(i, 1, "scrapped", None, "01-01 00:00", None) for i in range(30, 40)],
    (40, 4, "scrapped", None, "03-09 06:00", None),
]
ASSIGNMENTS = [  # (id, token, node, user, status)
    (1, 1, 10, 100, "started"),
    (2, 2, 10, 104, "assigned"),
    (3, 2, 10, 101, "accepted"),  # latest open: 101
    (4, 4, 11, 100, "completed"),  # not open: token 4 has no team
    (5, 5, 11, 103, "started"),
    (6, 6, 20, 102, "started"),
    (7, 10, 11, 100, "paused"),  # a completed token with an open assignment still
    (8, 13, 10, 104, "started"),
    (9, 14, 20, 104, "started"),
    (10, 15, 11, 101, "started"),
    (11, 9, 11, 106, "cancelled"),
    *[(i, i, 11, 106, "started") for i in range(16, 26)],
]
EVENTS = [  # (token, type, from, to, operator, time)
    # bottleneck waits
    (2, "enter_node", None, 10, 104, "03-09 20:00"),
    (2, "enter_node", None, 10, 101, "03-10 01:00"),  # latest entry at node 10
    (2, "enter_node", None, 11, 101, "03-10 02:00"),  # another node
    (2, "enter_node", None, 10, 101, "03-10 04:00"),  # after now
    (13, "enter_node", None, 10, 104, "03-10 03:29:42"),
    (5, "enter_node", None, 11, 103, "03-10 03:00"),
    # node visits for cycle times
    (30, "enter_node", None, 10, 100, "03-05 10:00"),
    (30, "exit_node", 10, None, 100, "03-05 10:10:05"),
    (30, "enter_node", None, 11, 100, "03-05 10:10:05"),
    (30, "exit_node", 11, None, 100, "03-05 10:12:05"),
    (31, "enter_node", None, 10, 101, "03-06 09:00"),
    (31, "exit_node", 10, None, 101, "03-06 09:20:10"),
    (32, "enter_node", None, 10, 104, "03-07 08:00"),
    (32, "exit_node", 10, None, 104, "03-07 08:30:15"),
    (33, "enter_node", None, 10, 103, "03-03 23:00"),
    (33, "exit_node", 10, None, 103, "03-04 00:00"),  # first second in
    (34, "enter_node", None, 10, 100, "03-03 23:00"),
    (34, "exit_node", 10, None, 100, "03-03 23:59:59"),  # last second out
    (35, "enter_node", None, 10, 100, "03-09 10:00"),  # never exits
    (36, "enter_node", None, 10, 100, "03-08 10:00"),
    (36, "enter_node", None, 10, 100, "03-08 11:00"),
    (36, "exit_node", 10, None, 100, "03-08 11:45:07"),  # pairs with the 11:00 entry
    (37, "exit_node", 10, None, 100, "03-08 12:00"),  # an exit without entry
    (38, "enter_node", None, 11, 105, "03-10 00:00"),
    (38, "exit_node", 11, None, 105, "03-10 00:01"),
    (39, "enter_node", None, 11, 100, "03-10 03:00"),
    (39, "exit_node", 11, None, 100, "03-10 04:00"),  # ends after now
]


def load(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            t.routing_graph.insert(),
            [dict(id_graph=g, code=c, name=n, production_type=p) for g, c, n, p in GRAPHS],
        )
        conn.execute(
            t.routing_node.insert(),
            [
                dict(id_node=n, id_graph=g, node_code=c, node_name=name, node_type="operation")
                for n, g, c, name in NODES
            ],
        )
        conn.execute(
            t.team.insert(),
            [
                dict(id_team=i, code=c, name=n, team_category=cat, active=a)
                for i, c, n, cat, a in TEAMS
            ],
        )
        conn.execute(
            t.team_member.insert(),
            [dict(id_team=tm, id_member=u, active=a) for tm, u, a in MEMBERS],
        )
        conn.execute(
            t.job_graph_instance.insert(),
            [
                dict(id_instance=i, id_job_ticket=1, id_graph=g, status="active", production_type=p)
                for i, g, p in INSTANCES
            ],
        )
        conn.execute(t.flow_token.insert(), [token_row(*row) for row in TOKENS])
        conn.execute(
            t.token_assignment.insert(),
            [
                dict(
                    id_assignment=i,
                    id_token=tok,
                    id_node=n,
                    assigned_to_user_id=u,
                    status=s,
                    assigned_at=at("03-01 00:00"),
                )
                for i, tok, n, u, s in ASSIGNMENTS
            ],
        )
        conn.execute(t.token_event.insert(), [event_row(*row) for row in EVENTS])


def token_row(
    id_token: int, instance: int, status: str, node: int | None, spawned: str, completed: str | None
) -> dict[str, Any]:
    return dict(
        id_token=id_token,
        id_instance=instance,
        token_type="piece",
        status=status,
        current_node_id=node,
        spawned_at=at(spawned),
        completed_at=at(completed) if completed else None,
    )


def event_row(
    token: int, kind: str, src: int | None, dst: int | None, user: int, when: str
) -> dict[str, Any]:
    return dict(
        id_token=token,
        event_type=kind,
        from_node_id=src,
        to_node_id=dst,
        operator_user_id=user,
        event_time=at(when),
    )


# (graph, node, team): (wip, completed, waiting)
FLOW = {
    (1, 10, 1): (1, 0, 0),  # token 1 (user 100 -> Alpha)
    (1, 10, 2): (2, 0, 2),  # tokens 2 (latest open assignment: 101) and 13 (I3 is graph 1)
    (1, 10, None): (1, 0, 0),  # token 3, no assignment
    (1, 11, None): (2, 1, 1),  # 4 (assignment not open), 5 (user 103), 8 completed 00:30
    (1, 11, 1): (0, 1, 0),  # token 10 completed 03-09 23:59:59, still assigned to 100
    (1, 11, 2): (1, 0, 0),  # token 15 (user 101)
    (1, 11, 5): (10, 0, 0),  # tokens 16..25
    (2, 20, 3): (1, 0, 0),  # token 6 (user 102 -> Charlie, membership active)
    (2, 20, 2): (1, 0, 0),  # token 14 (user 104)
    (2, 99, None): (1, 0, 0),  # token 7
    (1, None, None): (1, 0, 0),  # token 12: live, no node
}  # token 9 completed exactly 24 h ago and token 11 is scrapped: nowhere

# node: (code, name, queue, avg wait minutes, score hours)
BOTTLENECKS = {
    # tokens 2 (entered 01:00 -> 9000 s), 3 (no entry: spawned 03-09 10:00 -> 63000 s),
    # 13 (entered 03:29:42 -> 18 s): 72018 s / 3 / 60 = 400.1 min; 72018 / 3600 = 20.005 h
    # -> 20.01 (half away from zero; a binary float would give 20.00)
    10: ("CUT", "Cutting", 3, D("400.10"), D("20.01")),
    11: ("SEW", "Sewing", 1, D("30.00"), D("0.50")),  # token 5, entered 03:00
    99: (None, None, 1, D("0.00"), D("0.00")),  # token 7 spawned after now: wait 0
}

# team: (name, category, active, waiting, avg_load)
WORKLOAD = {
    1: ("Alpha", "sewing", 1, 0, D("100.00")),  # token 1; one active member (100)
    2: ("Bravo", "cutting", 2, 2, D("66.67")),  # 14, 15 active; 2, 13 waiting; members 3
    4: ("Delta", "qc", 0, 0, D("0.00")),  # no active member, no token
    5: ("Echo", "edge", 10, 0, D("999.99")),  # 100 * 10 / 1 = 1000, capped
}  # Charlie is inactive: no row

PERIOD = (datetime(2025, 3, 4), SNAP)
# (node, team): (visits, p50, p95, avg) in minutes
CYCLE = {
    # node 10: 605, 1210, 1815, 3600 (token 33, exit at 03-04 00:00), 2707 (token 36)
    # sorted 605 1210 1815 2707 3600; p50 = 1815 s; p95 at 0.95 * 4 = 3.8:
    # 2707 + 0.8 * 893 = 3421.4 s = 57.023 min; avg 9937 / 5 = 1987.4 s = 33.123 min
    (10, None): (5, D("30.25"), D("57.02"), D("33.12")),
    # node 11: 120 (token 30), 60 (token 38); p95 = 60 + 0.95 * 60 = 117 s
    (11, None): (2, D("1.50"), D("1.95"), D("1.50")),
    # team 1 (user 100): 120, 605, 2707; p95 at 1.9: 605 + 0.9 * 2102 = 2496.8 s = 41.613;
    # avg 3432 / 3 = 1144 s = 19.067
    (None, 1): (3, D("10.08"), D("41.61"), D("19.07")),
    # team 2 (101, 104): 1210, 1815: p50 1512.5 s = 25.208; p95 1210 + 0.95 * 605 = 1784.75 s
    (None, 2): (2, D("25.21"), D("29.75"), D("25.21")),
}  # operators 103 and 105 have no team: in node rows only; 34, 35, 37, 39 are no visits

H1, C2, Y1 = ("hatthasilpa", 1), ("classic", 2), ("hybrid", 1)
# (day, type, graph): (spawned, completed, avg lead hours, throughput per day)
TRENDS = {
    # 28 completed 02-09 after 204 h; the week 02-03..02-09 also has 29 (02-08): 2 / 7
    (date(2025, 2, 9), *H1): (0, 1, D("204.00"), D("0.29")),
    (date(2025, 3, 1), *H1): (10, 0, None, D("0.00")),  # tokens 16..25
    (date(2025, 3, 8), *H1): (2, 0, None, D("0.00")),  # 8, 9
    # spawned 1-5, 10 (00:00), 15; completed 9 (24 h) and 10 (86399 s): 23.9999 h
    (date(2025, 3, 9), *H1): (7, 2, D("24.00"), D("0.29")),
    # 12 spawned at 00:00; 8 completed 00:30 after 38.5 h; week 03-04..03-10: 3 / 7
    (date(2025, 3, 10), *H1): (1, 1, D("38.50"), D("0.43")),
    (date(2025, 3, 2), *C2): (1, 0, None, D("0.00")),  # 26
    (date(2025, 3, 3), *C2): (1, 0, None, D("0.00")),  # 27
    (date(2025, 3, 4), *C2): (0, 2, D("42.00"), D("0.29")),  # 26 (48 h), 27 (36 h)
    (date(2025, 3, 8), *C2): (1, 0, None, D("0.29")),  # 11 (scrapped, spawned all the same)
    (date(2025, 3, 9), *C2): (2, 0, None, D("0.29")),  # 6, 14
    (date(2025, 3, 10), *C2): (1, 0, None, D("0.29")),  # 7 (03:45)
    (date(2025, 3, 9), *Y1): (1, 0, None, D("0.00")),  # 13 at 23:59:59
    (date(2025, 3, 9), "unknown", 3): (1, 0, None, D("0.00")),  # 40
}


def latest(engine: sa.Engine, table: sa.Table) -> list[sa.Row[Any]]:
    """The latest snapshot, read in one statement as a dashboard does."""
    newest = sa.select(sa.func.max(table.c.snapshot_at)).scalar_subquery()
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).where(table.c.snapshot_at == newest)))


def keyed(
    rows: list[sa.Row[Any]], key: tuple[str, ...], values: tuple[str, ...]
) -> dict[Any, tuple[Any, ...]]:
    out: dict[Any, tuple[Any, ...]] = {}
    for row in rows:
        k = tuple(getattr(row, c) for c in key)
        out[k if len(k) > 1 else k[0]] = tuple(getattr(row, c) for c in values)
    assert len(out) == len(rows), "duplicate keys in one snapshot"
    return out
