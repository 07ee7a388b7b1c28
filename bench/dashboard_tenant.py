"""Synthetic tenant of the size the dashboard benchmark asks for, bulk-inserted.

200,000 tokens over 90 days (20,000 live, spawned in the last 5 days), 100 nodes
in 5 graphs of 20, 20 teams of 8 members (every 10th member also in a second
team, 5 % of memberships inactive, 10 operators in no team), about 2,000,000
token events: spawn and complete/scrap for every token, the full route history
(enter, start_work, complete_work, exit per node) of every live token and of the
most recently completed ones until the budget is used.  Deterministic (seeded).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bgworkers.schema import tenant as t

TOKENS, LIVE, SCRAPPED, EVENTS = 200_000, 20_000, 4_000, 2_000_000
GRAPHS, NODES_PER_GRAPH, TEAMS, MEMBERS = 5, 20, 20, 160
INSTANCES = 8_000
HISTORY_DAYS = 90
USERS = list(range(1001, 1001 + MEMBERS + 10))  # the last 10 are in no team
LIVE_STATUS = (("ready", 35), ("active", 25), ("waiting", 30), ("paused", 10))
OPEN_FOR = {"ready": "assigned", "waiting": "accepted", "active": "started", "paused": "paused"}
CHUNK = 20_000


class Data:
    def __init__(self, now: datetime, seed: int = 11) -> None:
        self.now, self.rng = now, random.Random(seed)
        self.tokens: list[dict[str, Any]] = []  # column values by name
        self.events: list[dict[str, Any]] = []
        self.assignments: list[dict[str, Any]] = []

    def at(self, days_ago: float) -> datetime:
        return (self.now - timedelta(days=days_ago)).replace(microsecond=0)

    def route(
        self,
        token: int,
        graph: int,
        spawned: datetime,
        step: timedelta,
        nodes: int,
        last_open: str | None,
    ) -> None:
        """Full history through the first `nodes` nodes; the last one left open if asked."""
        base = (graph - 1) * NODES_PER_GRAPH
        for i in range(nodes):
            node, enter = base + i + 1, spawned + step * i + timedelta(seconds=30)
            user = self.rng.choice(USERS)
            is_open = last_open is not None and i == nodes - 1
            kinds = (
                (("enter_node", 0.0),)
                if is_open
                else (
                    ("enter_node", 0.0),
                    ("start_work", 0.3),
                    ("complete_work", 0.8),
                    ("exit_node", 0.9),
                )
            )
            for kind, share in kinds:
                self.events.append(
                    dict(
                        id_token=token,
                        event_type=kind,
                        operator_user_id=user,
                        from_node_id=node if kind == "exit_node" else None,
                        to_node_id=node if kind == "enter_node" else None,
                        event_time=(enter + step * share).replace(microsecond=0),
                    )
                )
            if is_open and self.rng.random() > 0.15:
                assert last_open is not None
                self.assignment(token, node, user, OPEN_FOR[last_open], enter)
            elif not is_open:
                self.assignment(token, node, user, "completed", enter)

    def assignment(self, token: int, node: int, user: int, status: str, at: datetime) -> None:
        self.assignments.append(
            dict(
                id_token=token,
                id_node=node,
                assigned_to_user_id=user,
                status=status,
                assigned_at=at,
            )
        )

    def build(self) -> None:
        rng = self.rng
        plans = []
        for token in range(1, TOKENS + 1):
            instance = (token - 1) % INSTANCES + 1
            graph = (instance - 1) % GRAPHS + 1
            if token <= LIVE:
                spawned = self.at(rng.uniform(10 / 1440, 5))
                step = timedelta(days=rng.uniform(2, 6)) / NODES_PER_GRAPH
                reached = min(NODES_PER_GRAPH, int((self.now - spawned) / step) + 1)
                status = rng.choices([s for s, _ in LIVE_STATUS], [w for _, w in LIVE_STATUS])[0]
                row = dict(
                    status=status,
                    node=(graph - 1) * NODES_PER_GRAPH + reached,
                    spawned=spawned,
                    completed=None,
                )
                plans.append((token, graph, spawned, step, reached, status))
            elif token <= LIVE + SCRAPPED:
                spawned = self.at(rng.uniform(1, HISTORY_DAYS))
                row = dict(
                    status="scrapped",
                    spawned=spawned,
                    completed=None,
                    node=(graph - 1) * NODES_PER_GRAPH + rng.randint(1, NODES_PER_GRAPH),
                )
            else:
                spawned = self.at(rng.uniform(1, HISTORY_DAYS))
                done = min(spawned + timedelta(days=rng.uniform(1, 4)), self.at(1 / 1440))
                row = dict(
                    status="completed",
                    spawned=spawned,
                    completed=done.replace(microsecond=0),
                    node=graph * NODES_PER_GRAPH,
                )
            self.tokens.append(
                dict(
                    id_token=token,
                    id_instance=instance,
                    token_type="piece",
                    status=row["status"],
                    current_node_id=row["node"],
                    spawned_at=row["spawned"],
                    completed_at=row["completed"],
                )
            )
            self.events.append(
                dict(
                    id_token=token,
                    event_type="spawn",
                    event_time=spawned,
                    operator_user_id=None,
                    from_node_id=None,
                    to_node_id=None,
                )
            )
            end = row["completed"] or (
                spawned + timedelta(hours=6) if row["status"] == "scrapped" else None
            )
            if end is not None:
                self.events.append(
                    dict(
                        id_token=token,
                        event_type="complete_token" if row["completed"] else "scrap",
                        event_time=end,
                        operator_user_id=None,
                        from_node_id=None,
                        to_node_id=None,
                    )
                )
        for token, graph, spawned, step, reached, status in plans:
            self.route(token, graph, spawned, step, reached, status)
        recent = sorted(
            (r for r in self.tokens if r["status"] == "completed"),
            key=lambda r: r["completed_at"],
            reverse=True,
        )
        for token_row in recent:
            if len(self.events) + 4 * NODES_PER_GRAPH > EVENTS:
                break
            spawned, done = token_row["spawned_at"], token_row["completed_at"]
            graph = (token_row["id_instance"] - 1) % GRAPHS + 1
            self.route(
                token_row["id_token"],
                graph,
                spawned,
                (done - spawned) / (NODES_PER_GRAPH + 1),
                NODES_PER_GRAPH,
                None,
            )

    def master(self) -> dict[sa.Table, list[dict[str, Any]]]:
        types = ("hatthasilpa", "hatthasilpa", "classic", "classic", "hatthasilpa")
        graphs = [
            dict(id_graph=g, code=f"G{g}", name=f"Graph {g}", production_type=types[g - 1])
            for g in range(1, GRAPHS + 1)
        ]
        nodes = [
            dict(
                id_node=(g - 1) * NODES_PER_GRAPH + i,
                id_graph=g,
                node_code=f"N{g}_{i}",
                node_name=f"Node {i} of graph {g}",
                node_type="operation",
            )
            for g in range(1, GRAPHS + 1)
            for i in range(1, NODES_PER_GRAPH + 1)
        ]
        teams = [
            dict(id_team=i, code=f"T{i}", name=f"Team {i}", team_category="work", active=1)
            for i in range(1, TEAMS + 1)
        ]
        members = []
        for n, user in enumerate(USERS[:MEMBERS]):
            members.append(
                dict(id_team=n % TEAMS + 1, id_member=user, active=0 if n % 20 == 7 else 1)
            )
            if n % 10 == 3:
                members.append(dict(id_team=(n + 7) % TEAMS + 1, id_member=user, active=1))
        instances = [
            dict(
                id_instance=i,
                id_job_ticket=i,
                id_graph=(i - 1) % GRAPHS + 1,
                status="active",
                production_type=None
                if i % 3 == 0
                else "hybrid"
                if i % 12 == 1
                else types[(i - 1) % GRAPHS],
            )
            for i in range(1, INSTANCES + 1)
        ]
        return {
            t.routing_graph: graphs,
            t.routing_node: nodes,
            t.team: teams,
            t.team_member: members,
            t.job_graph_instance: instances,
        }


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), CHUNK):
        yield rows[i : i + CHUNK]


def load(engine: sa.Engine, now: datetime) -> dict[str, int]:
    """Fill an empty tenant database (ERP schema created) and return row counts."""
    data = Data(now)
    data.build()
    tables = {
        **data.master(),
        t.flow_token: data.tokens,
        t.token_event: data.events,
        t.token_assignment: data.assignments,
    }
    for table, rows in tables.items():
        for chunk in _chunks(rows):
            with engine.begin() as conn:
                conn.execute(table.insert(), chunk)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE TABLE flow_token, token_event, token_assignment")
    return {table.name: len(rows) for table, rows in tables.items()}
