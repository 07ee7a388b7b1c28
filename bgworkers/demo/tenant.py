"""One tenant's rows: master data, then job tickets streamed one at a time.

Each ticket writes its graph instance, its serials (job_ticket_serial, core
serial_registry), its tokens with events and assignments, and any outbox or
quarantine rows planned for it.  Problem tickets (plan.groups) also carry the
planted cases (see `planted`).  What was written is checked against the plan
at the end.

Times: the serial tables (core serial_registry; job_ticket_serial,
serial_link_outbox and serial_quarantine in the tenant) hold naive UTC, every
other tenant table naive ERP local time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from random import Random

from bgworkers.demo import planted
from bgworkers.demo import serialgen as sg
from bgworkers.demo.catalog import (
    DEMO_SALT_VERSION,
    LEATHERS,
    PRODUCTS,
    GraphSpec,
    Org,
    Profile,
    TeamSpec,
    memberships,
)
from bgworkers.demo.flow import BRIEF, FULL, LIVE, NONE, Flow, Node, Ticket
from bgworkers.demo.plan import (
    CANCEL_DELAY,
    CANCELLED,
    CLASSIC,
    PIECE_ANOMALIES,
    PIECE_GAP,
    TICKET_TYPES,
    Plan,
)
from bgworkers.demo.stamps import HOUR, MINUTE, Stamps
from bgworkers.demo.writer import BulkWriter

PROCESS_MODES = ("piece", "batch", "hybrid")
P_COMPONENT = 0.06  # hatthasilpa pieces whose strap is tracked as a component token
OUTBOX_DONE_EVERY = 97  # every 97th serial of a settled hatthasilpa ticket went through the outbox


@dataclass(frozen=True)
class TenantRun:
    """What one tenant generation wrote: rows per table and planted counts."""

    code: str
    rows: dict[str, int]
    planted: dict[str, int]
    seconds: float


class TenantGenerator:
    def __init__(
        self,
        org: Org,
        other: Org,
        profile: Profile,
        plan: Plan,
        rng: Random,
        graphs: list[GraphSpec],
        teams: list[TeamSpec],
        tstamps: Stamps,
        cstamps: Stamps,
        tw: BulkWriter,
        cw: BulkWriter,
        first_registry_id: int,
    ) -> None:
        self.org, self.other, self.profile, self.plan, self.rng = org, other, profile, plan, rng
        self.graphs, self.teams = graphs, teams
        self.ts, self.cs, self.tw, self.cw = tstamps, cstamps, tw, cw
        self.flow = Flow(rng, plan.at, tstamps, tw)
        self.maker = sg.SerialMaker(org.serial_code, rng.randrange(sg.HASH_SPACE))
        self.next_registry = first_registry_id
        self.next_jts = 1
        self.next_outbox = 1
        self.next_quarantine = 1
        self.extra_index = plan.n  # serial indexes past n: rows added to tickets (orphans)
        self.found: Counter[str] = Counter()
        self.routes: dict[int, list[Node]] = {}

    def master_data(self) -> None:
        b = self.tw.buffers
        members = memberships(self.profile.teams, self.profile.members)
        active_teams = {t.id for t in self.teams if t.active}
        by_category: dict[str, list[int]] = {}
        for team_id, member, active in members:
            if active and team_id in active_teams:
                by_category.setdefault(self.teams[team_id - 1].category, []).append(member)
        everyone = sorted({m for _, m, active in members if active})
        for t in self.teams:
            b["team"].append((t.id, t.code, t.name, t.category, int(t.active)))
        b["team_member"].extend((t, m, int(a)) for t, m, a in members)
        node_id = 0
        for g in self.graphs:
            b["routing_graph"].append((g.id, g.code, g.name, g.production_type))
            route: list[Node] = []
            for code, name, ntype, category, lo, hi in g.steps:
                node_id += 1
                wip = None if ntype == "qc" else 10 * (1 + node_id % 5)
                sla = hi * 2 if node_id % 3 else None
                b["routing_node"].append((node_id, g.id, code, name, ntype, wip, sla))
                ops = tuple(sorted(set(by_category.get(category, everyone))))
                route.append((node_id, lo * MINUTE, hi * MINUTE, ops))
            self.routes[g.id] = route
        self.tw.flush()

    def tickets(self) -> None:
        for t in range(self.plan.tickets):
            self.ticket(t)
            self.tw.flush()
            self.cw.flush()

    def check(self) -> dict[str, int]:
        """The planted counts, after checking that exactly those were written."""
        wrong = {k: (v, self.found[k]) for k, v in self.plan.counts.items() if self.found[k] != v}
        if wrong:
            raise RuntimeError(f"demo generator bug: planned vs written {wrong}")
        return dict(self.plan.counts)

    # ---------------------------------------------------------------- one ticket

    def ticket(self, t: int) -> None:
        plan, c = self.plan, Ticket()
        c.t, c.id, c.kind, c.start = t, t + 1, plan.kind[t], plan.start[t]
        c.first, c.size = plan.first[t], plan.size[t]
        spec = self.graphs[plan.graph[t] - 1]
        c.route, c.sku = self.routes[spec.id], spec.skus[plan.sku[t]]
        # Classic pieces leave their batch after the first node (cutting) and go on from there.
        c.piece_route = c.route[1:] if c.kind == CLASSIC and len(c.route) > 1 else c.route
        c.reg_type = "oem" if c.kind == CLASSIC else "hatthasilpa"
        full, brief = c.start >= plan.full_from, c.start >= plan.brief_from
        c.mode = FULL if full else BRIEF if brief else NONE
        c.group = plan.groups.get(t)
        c.cancelled = bool(plan.flags[t] & CANCELLED)
        c.yyyymmdd = self.cs.utc_yyyymmdd(c.start)
        c.head, c.head_sum = self.maker.prefix(c.reg_type, c.sku, c.yyyymmdd)
        c.generated = self.ts.utc(c.start)
        c.spawns = self._spawn_times(c.kind, c.start, c.size)
        c.cancel_at = c.spawns[-1] + self.rng.randint(*CANCEL_DELAY) if c.cancelled else None
        c.slots = plan.group_kinds(c.group, PIECE_ANOMALIES) if c.group is not None else []
        c.eligible = plan.outbox_eligible(t)
        c.statuses, c.clean_serial = [], ""
        if c.kind == CLASSIC:
            batch = self.flow.batch(c.id, c.route[0], c.start, c.spawns[-1], c.mode)
            c.statuses.append(batch[1])
        for j in range(c.size):
            self._piece(c, j)
        if c.group is not None:
            planted.extra_tokens(self, c, c.group)
        for m, variant in enumerate(plan.orphans.get(t, [])):
            planted.orphan(self, c, m, variant)
        self._ticket_rows(c, spec)

    def _spawn_times(self, kind: int, start: int, size: int) -> list[int]:
        between = self.flow.between
        if kind == CLASSIC:  # the batch is cut first, then pieces leave it a minute apart
            t = start + between(HOUR, 4 * HOUR)
            return [t + j * between(60, 180) for j in range(size)]
        times, t = [], start
        for _ in range(size):
            t += between(*PIECE_GAP)
            times.append(t)
        return times

    def _piece(self, c: Ticket, j: int) -> None:
        plan, flow = self.plan, self.flow
        s = c.first + j
        serial = self.maker.serial(c.head, c.head_sum, s)
        t_sp = c.spawns[j]
        role = c.slots[j] if j < len(c.slots) else None
        box = plan.outbox.get(s)
        if box is None and c.eligible and s % OUTBOX_DONE_EVERY == 0:
            box = "outbox_done"
        tid: int | None = None
        status, link_to = "reserved", None
        if role is not None:
            serial, t_sp, tid, status, link_to = planted.anomaly(self, c, j, role, serial, t_sp)
        else:
            c.clean_serial = serial
            if t_sp <= plan.at:
                tid, status = flow.token(
                    c.id, "piece", serial, c.piece_route, t_sp, c.mode, cancel_at=c.cancel_at
                )
                if c.kind != CLASSIC and self.rng.random() < P_COMPONENT:
                    route = c.route[:3]
                    part = flow.token(
                        c.id, "component", None, route, t_sp, c.mode, None, c.cancel_at
                    )
                    c.statuses.append(part[1])
        c.statuses.append(status)
        linked = tid is not None and role != "missing_tenant_link"
        spawned_at = self.ts.utc(t_sp) if linked else None
        self.add_serial(c, serial, j + 1, spawned_at, tid if linked else None)
        if box is not None and tid is not None:
            planted.outbox_row(self, box, s, serial, tid, t_sp)
        if s in plan.quarantine and tid is not None:
            planted.quarantine_row(self, serial, tid, t_sp)
        gave_up = box == "outbox_dead" and s % 2 == 0
        if role == "unregistered" or box == "outbox_due_retry" or gave_up:
            return  # no registry row
        org, dag = self.org, link_to or tid
        if role == "missing_core_link" or box in ("outbox_due_new", "outbox_future"):
            dag = None
        elif role == "unregistered_other_tenant":
            org, dag = self.other, None
        if role == "hash_fail":
            signature = sg.forged_signature(serial, c.reg_type)
        else:
            signature = sg.signature(serial, c.reg_type)
        reg_status = status if status in ("completed", "scrapped", "reserved") else "active"
        self.register(c, serial, org, dag, reg_status, signature, serial[-1], "piece")

    def add_serial(
        self, c: Ticket, serial: str, seq: int, spawned_at: str | None, token: int | None
    ) -> None:
        row = (self.next_jts, c.id, serial, seq, c.generated, spawned_at, token)
        self.tw.buffers["job_ticket_serial"].append(row)
        self.next_jts += 1

    def register(
        self,
        c: Ticket,
        serial: str,
        org: Org,
        dag: int | None,
        status: str,
        signature: str,
        check: str | None,
        scope: str,
    ) -> None:
        """A core serial_registry row (created when the ticket generated its serials)."""
        self.cw.buffers["serial_registry"].append((
            self.next_registry, serial, org.id, org.code, c.reg_type, c.sku, c.id, dag, status,
            signature, DEMO_SALT_VERSION, check, scope, self.cs.utc(c.start),
        ))  # fmt: skip
        self.next_registry += 1

    def _ticket_rows(self, c: Ticket, spec: GraphSpec) -> None:
        statuses = c.statuses
        if c.cancelled:
            status, instance = "cancelled", "cancelled"
        elif c.group is not None:
            status, instance = "on_hold", "active"
        elif all(s == "reserved" for s in statuses):
            status, instance = "planned", "pending"
        elif any(s in LIVE or s == "reserved" for s in statuses):
            status, instance = "in_progress", "active"
        else:
            status, instance = "completed", "completed"
        ptype = TICKET_TYPES[c.kind]
        leather = LEATHERS[(c.t * 7 + len(c.sku)) % len(LEATHERS)]
        code = f"JT-{self.ts.local_day(c.start):%y%m%d}-{c.id:05d}"
        name = f"{PRODUCTS.get(c.sku, c.sku)} - {leather} ({c.size} pcs)"
        b = self.tw.buffers
        b["job_ticket"].append(
            (c.id, code, name, status, PROCESS_MODES[c.kind], ptype, c.sku, c.size)
        )
        b["job_graph_instance"].append((c.id, c.id, spec.id, instance, ptype))
