"""Tokens moving through a route: flow_token rows with their events and assignments.

A token with a full history is simulated node by node against `at`: it
enters a node, waits in the queue, is assigned, worked on, and exits to the
next node, so each visit yields enter_node / start_work / complete_work /
exit_node events and an assignment.  It may stop anywhere: waiting for work
(`ready`/`waiting`, the visit never exits), at work (`active`, `paused`),
scrapped, or completed after the last node.  A settled token without a full
history gets one cheap draw of its lead time and at most two events.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

from bgworkers.demo.plan import QUEUE_WAIT
from bgworkers.demo.stamps import HOUR, MINUTE, Stamps
from bgworkers.demo.writer import BulkWriter

LIVE = ("ready", "active", "waiting", "paused")
FULL, BRIEF, NONE = 2, 1, 0
P_SCRAP = 0.015  # a piece fails at some node
P_REJECT = 0.04  # an operator rejects the assignment, someone else takes it
P_PAUSED = 0.2  # a token at work is paused
P_ASSIGNED = 0.7  # a token waiting for work already has an assignee

#: (id_node, work seconds low, high, operators: member ids)
Node = tuple[int, int, int, tuple[int, ...]]
Route = Sequence[Node]


class Flow:
    """Writes tokens, numbering tokens, events and assignments in generation order."""

    def __init__(self, rng: Random, at: int, stamps: Stamps, writer: BulkWriter) -> None:
        self.rng = rng
        self.at = at
        self.stamps = stamps
        self.tokens = writer.buffers["flow_token"]
        self.events = writer.buffers["token_event"]
        self.assignments = writer.buffers["token_assignment"]
        self.writer = writer
        self.next_token = 1
        self.next_event = 1
        self.next_assignment = 1
        self._random = rng.random

    def between(self, lo: int, hi: int) -> int:
        """A random integer in [lo, hi]; much cheaper than Random.randint."""
        return lo + int(self._random() * (hi - lo + 1))

    def token(
        self,
        instance: int,
        ttype: str,
        serial: str | None,
        route: Route,
        t0: int,
        mode: int,
        force: str | None = None,
        cancel_at: int | None = None,
    ) -> tuple[int, str]:
        """A token spawned at t0; `force` makes it stop live (or scrapped) at a random node."""
        tid = self.next_token
        self.next_token += 1
        end: int | None
        if force is None and mode != FULL:
            status, node, start_at, end, work_ms = self._settled(tid, route, t0, mode, cancel_at)
        else:
            status, node, start_at, end, work_ms = self._simulate(tid, route, t0, force, cancel_at)
        local = self.stamps.local
        done = status == "completed"
        self.tokens.append(
            (
                tid,
                instance,
                ttype,
                serial,
                node,
                status,
                local(t0),
                None if start_at is None else local(start_at),
                local(end) if done and end is not None else None,
                work_ms if done else None,
            )
        )
        return tid, status

    def batch(
        self,
        instance: int,
        node: Node,
        t0: int,
        end: int,
        mode: int,
        serial: str | None = None,
        force: str | None = None,
    ) -> tuple[int, str]:
        """A batch token: cut together at the first node until its last piece is spawned."""
        tid = self.next_token
        self.next_token += 1
        local, ev = self.stamps.local, self.events.append
        node_id, _, _, ops = node
        live = force is not None or end > self.at
        status = force or ("active" if live else "completed")
        start = t0 + self.between(5 * MINUTE, HOUR)
        op = ops[int(self._random() * len(ops))]
        if mode != NONE or live:
            ev((self._eid(), tid, "spawn", None, node_id, None, local(t0)))
        if mode == FULL or live:
            ev((self._eid(), tid, "enter_node", None, node_id, None, local(t0)))
            ev((self._eid(), tid, "start_work", node_id, node_id, op, local(start)))
            self._assign(tid, node_id, op, "started" if live else "completed", t0, start)
            if not live:
                ev((self._eid(), tid, "complete_work", node_id, node_id, op, local(end)))
                ev((self._eid(), tid, "exit_node", node_id, None, op, local(end)))
        if not live and mode != NONE:
            ev((self._eid(), tid, "complete_token", node_id, None, op, local(end)))
        self.tokens.append(
            (
                tid,
                instance,
                "batch",
                serial,
                node_id,
                status,
                local(t0),
                local(start),
                None if live else local(end),
                None,
            )
        )
        return tid, status

    # ---------------------------------------------------------------- internals

    def _eid(self) -> int:
        eid = self.next_event
        self.next_event += 1
        return eid

    def _assign(self, tid: int, node: int, op: int, status: str, lo: int, hi: int) -> None:
        at = lo + int((hi - lo) * self.rng.uniform(0.1, 0.9))
        self.assignments.append(
            (self.next_assignment, tid, node, op, status, self.stamps.local(at))
        )
        self.next_assignment += 1

    def _settled(
        self, tid: int, route: Route, t0: int, mode: int, cancel_at: int | None
    ) -> tuple[str, int, int | None, int, int]:
        rng, n = self.rng, len(route)
        lead = n * self.between(3 * HOUR, 8 * HOUR)
        end = t0 + lead
        status, at_node = "completed", n - 1
        if cancel_at is not None and end > cancel_at:
            status, end, at_node = "scrapped", cancel_at, min(n - 1, (cancel_at - t0) * n // lead)
        elif rng.random() < P_SCRAP:
            at_node = rng.randrange(n)
            status, end = "scrapped", t0 + lead * (2 * at_node + 1) // (2 * n)
        start_at: int | None = t0 + self.between(5 * MINUTE, 4 * HOUR)
        if start_at is not None and start_at > end:
            start_at = None
        node = route[at_node][0]
        if mode == BRIEF:
            local, ev = self.stamps.local, self.events.append
            ev((self._eid(), tid, "spawn", None, route[0][0], None, local(t0)))
            kind = "complete_token" if status == "completed" else "scrap"
            ev((self._eid(), tid, kind, node, None, None, local(end)))
        return status, node, start_at, end, lead * self.between(25, 45) * 10

    def _simulate(
        self, tid: int, route: Route, t0: int, force: str | None, cancel_at: int | None
    ) -> tuple[str, int, int | None, int | None, int]:
        rng, at, local, ev = self.rng, self.at, self.stamps.local, self.events.append
        n = len(route)
        stop = rng.randrange(n) if force else -1
        scrap_node = -1
        if force == "scrapped":
            scrap_node, stop = stop, -1
        elif force is None and rng.random() < P_SCRAP:
            scrap_node = n - 2 if n > 1 and rng.random() < 0.6 else rng.randrange(n)
        ev((self._eid(), tid, "spawn", None, route[0][0], None, local(t0)))
        t, prev, start_at, work_ms, op = t0, None, None, 0, None
        for i, (node, lo, hi, ops) in enumerate(route):
            enter = t
            ev((self._eid(), tid, "enter_node", prev, node, None, local(enter)))
            start = enter + self.between(*QUEUE_WAIT)
            op = ops[int(rng.random() * len(ops))]
            if (i == stop and force in ("ready", "waiting")) or (force is None and start > at):
                status = force or ("waiting" if rng.random() < 0.4 else "ready")
                if force or rng.random() < P_ASSIGNED:
                    kind = "accepted" if rng.random() < 0.5 else "assigned"
                    self._assign(tid, node, op, kind, enter, min(start, at))
                return status, node, start_at, None, work_ms
            if cancel_at is not None and start > cancel_at:
                ev((self._eid(), tid, "scrap", node, None, None, local(cancel_at)))
                return "scrapped", node, start_at, cancel_at, work_ms
            if rng.random() < P_REJECT:
                other = ops[int(rng.random() * len(ops))]
                self._assign(tid, node, other, "rejected", enter, start)
            ev((self._eid(), tid, "start_work", node, node, op, local(start)))
            start_at = start if start_at is None else start_at
            work = self.between(lo, hi)
            done = start + work
            if i == scrap_node:
                scrap_t = start + int(work * rng.uniform(0.2, 0.9))
                if force == "scrapped" or (
                    scrap_t <= at and (cancel_at is None or scrap_t <= cancel_at)
                ):
                    ev((self._eid(), tid, "scrap", node, None, op, local(scrap_t)))
                    self._assign(tid, node, op, "cancelled", enter, start)
                    return "scrapped", node, start_at, scrap_t, work_ms
            if i == stop or (force is None and done > at):
                paused = force == "paused" or (force is None and rng.random() < P_PAUSED)
                if paused:
                    until = start + work if force else at
                    pause_t = start + int((until - start) * rng.uniform(0.2, 0.8))
                    ev((self._eid(), tid, "pause", node, node, op, local(pause_t)))
                self._assign(tid, node, op, "paused" if paused else "started", enter, start)
                return ("paused" if paused else "active"), node, start_at, None, work_ms
            if cancel_at is not None and done > cancel_at:
                ev((self._eid(), tid, "scrap", node, None, op, local(cancel_at)))
                self._assign(tid, node, op, "cancelled", enter, start)
                return "scrapped", node, start_at, cancel_at, work_ms
            nxt = route[i + 1][0] if i + 1 < n else None
            ev((self._eid(), tid, "complete_work", node, node, op, local(done)))
            ev((self._eid(), tid, "exit_node", node, nxt, op, local(done)))
            self._assign(tid, node, op, "completed", enter, start)
            work_ms += work * 1000
            t, prev = done, node
        ev((self._eid(), tid, "complete_token", route[-1][0], None, op, local(t)))
        return "completed", route[-1][0], start_at, t, work_ms


class Ticket:
    """The state of the ticket being written (plain attributes, set by TenantGenerator)."""

    t: int
    id: int
    kind: int
    start: int
    first: int
    size: int
    route: list[Node]
    piece_route: list[Node]
    sku: str
    reg_type: str
    mode: int
    group: int | None
    cancelled: bool
    yyyymmdd: str
    head: str
    head_sum: int
    generated: str
    spawns: list[int]
    cancel_at: int | None
    slots: list[str]
    eligible: bool
    statuses: list[str]
    clean_serial: str
