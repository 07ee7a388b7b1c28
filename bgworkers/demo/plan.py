"""The ticket plan of one tenant, and where each planted anomaly goes.

A first, cheap pass lays out the job tickets (a few small integers each, in
compact arrays: about 2 MB at a million serials) and picks, deterministically,
the tickets and serials that carry anomalies, outbox rows and quarantine
history.  The generator then streams the rows ticket by ticket.

Times are UTC epoch seconds.  Tickets start in serial order over the span of
the history, so a serial's index tells its age.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from random import Random

from bgworkers.demo.catalog import GraphSpec, Profile
from bgworkers.demo.serialgen import HASH_SPACE
from bgworkers.demo.stamps import DAY, HOUR, MINUTE

HAT, CLASSIC, HYBRID = 0, 1, 2
TICKET_TYPES = ("hatthasilpa", "classic", "hybrid")
CANCELLED, PROBLEM = 1, 2

#: Token timing bounds shared with the flow simulation (seconds).
PIECE_GAP = (30 * MINUTE, 3 * HOUR)  # between two pieces of a hatthasilpa ticket
QUEUE_WAIT = (5 * MINUTE, 8 * HOUR)  # before work starts at a node
CANCEL_DELAY = (HOUR, 2 * DAY)  # after the last piece was spawned

#: Anomalies that sit on a live piece token, in the order they take pieces of a problem ticket.
PIECE_ANOMALIES = (
    "missing_tenant_link",
    "missing_core_link",
    "registry_mismatch",
    "unregistered",
    "unregistered_other_tenant",
    "invalid_format",
    "checksum_fail",
    "hash_fail",
    "duplicate",
)
#: Extra live tokens of a problem ticket (no job_ticket_serial row).
EXTRA_TOKENS = (
    "component_bad_parent",
    "legacy_temp",
    "legacy_year",
    "legacy_mo",
    "legacy_lot",
    "legacy_component",
)
ORPHANS = ("orphaned_completed", "orphaned_cancelled", "orphaned_stale")
OUTBOX_ROLES = ("outbox_due_new", "outbox_due_retry", "outbox_future", "outbox_dead")
PROBLEM_MIN_SIZE = len(PIECE_ANOMALIES) + 1  # + one clean piece, the valid component parent


def planted_counts(serials: int, rate: float) -> dict[str, int]:
    """How many of each planted case one tenant gets (k = rate x serials, at least 1).

    Some counts are k+1 so that two cases never show the same number in a test.
    """
    k = max(1, round(serials * rate))
    counts = {
        "missing_tenant_link": k,
        "missing_core_link": k + 1,
        "registry_mismatch": k,
        "unregistered": k,
        "unregistered_other_tenant": 1,
        "invalid_format": k + 1,
        "checksum_fail": k,
        "hash_fail": k,
        "duplicate": k,
        "component_bad_parent": k,
        "orphaned_completed": k,
        "orphaned_cancelled": k,
        "orphaned_stale": k,
        "legacy_temp": k,
        "legacy_year": k,
        "legacy_mo": k,
        "legacy_lot": k,
        "legacy_component": k,
        "outbox_due_new": k + 1,
        "outbox_due_retry": k,
        "outbox_future": k,
        "outbox_dead": k + 1,
        "quarantine_resolved": k + 1,
    }
    return counts


def serial_count(profile: Profile, scale: float) -> int:
    return max(1, round(profile.serials * scale))


@dataclass
class Plan:
    n: int
    at: int
    span: int
    settle_from: int  # tickets started before this are settled (every token ended)
    full_from: int  # tickets started at or after this keep full token histories
    brief_from: int  # ... at or after this: spawn + end events; before: none
    counts: dict[str, int]
    first: array[int] = field(default_factory=lambda: array("q"))
    size: array[int] = field(default_factory=lambda: array("i"))
    kind: array[int] = field(default_factory=lambda: array("b"))
    graph: array[int] = field(default_factory=lambda: array("i"))
    sku: array[int] = field(default_factory=lambda: array("i"))
    start: array[int] = field(default_factory=lambda: array("q"))
    flags: array[int] = field(default_factory=lambda: array("b"))
    groups: dict[int, int] = field(default_factory=dict)  # problem ticket -> group
    orphans: dict[int, list[str]] = field(default_factory=dict)  # ticket -> extra rows
    outbox: dict[int, str] = field(default_factory=dict)  # serial index -> outbox role
    quarantine: set[int] = field(default_factory=set)  # serial indexes with a resolved row

    @property
    def tickets(self) -> int:
        return len(self.first)

    def group_kinds(self, group: int, kinds: tuple[str, ...]) -> list[str]:
        """The cases of `kinds` that problem group `group` carries."""
        return [kind for kind in kinds if group < self.counts[kind]]

    def outbox_eligible(self, t: int) -> bool:
        return self.start[t] < self.settle_from and not self.flags[t] and self.kind[t] != CLASSIC


class PlanError(ValueError):
    """The profile and scale cannot hold every planted case."""


def settle_seconds(profile: Profile, graphs: list[GraphSpec]) -> int:
    """An upper bound of a ticket's life: every piece spawned and through its route."""
    spawn = profile.max_ticket * PIECE_GAP[1] + 4 * HOUR
    route = max(sum(QUEUE_WAIT[1] + hi * MINUTE for *_, hi in g.steps) for g in graphs)
    return spawn + route + CANCEL_DELAY[1] + DAY


def make_plan(
    rng: Random, profile: Profile, scale: float, at: int, graphs: list[GraphSpec]
) -> Plan:
    n = serial_count(profile, scale)
    if n + n // 100 > HASH_SPACE:  # room for the orphaned rows added to tickets
        raise PlanError(
            f"{n:,} serials is more than one tenant's HASH4 space allows "
            f"(at most {HASH_SPACE * 100 // 101:,}): lower the scale"
        )
    span_days = min(profile.max_span_days, max(profile.span_days, round(profile.span_days * scale)))
    span = span_days * DAY
    settle_from = at - settle_seconds(profile, graphs)
    plan = Plan(
        n, at, span, settle_from, settle_from, -(2**62), planted_counts(n, profile.anomaly_rate)
    )
    hat = [g for g in graphs if g.production_type == "hatthasilpa"] or graphs
    classic = [g for g in graphs if g.production_type == "classic"] or graphs
    i = 0
    while i < n:
        size = min(rng.randint(profile.min_ticket, profile.max_ticket), n - i)
        r = rng.random()
        kind = HAT if r < 0.62 else CLASSIC if r < 0.92 else HYBRID
        spec = rng.choice(classic if kind == CLASSIC else hat)
        start = at - span + span * i // n + rng.randrange(max(1, span * size // (2 * n)))
        plan.first.append(i)
        plan.size.append(size)
        plan.kind.append(kind)
        plan.graph.append(spec.id)
        plan.sku.append(rng.randrange(len(spec.skus)))
        plan.start.append(start)
        old = start < settle_from - CANCEL_DELAY[1]
        plan.flags.append(CANCELLED if old and rng.random() < 0.02 else 0)
        i += size
    _ensure_cancelled(plan)
    _ensure_settled_hatthasilpa(plan, hat)
    _place_anomalies(plan)
    _place_outbox(plan)
    _event_windows(plan, profile, graphs)
    return plan


def _spread(candidates: list[int], count: int) -> list[int]:
    """`count` items evenly spread over `candidates` (sorted oldest first), newest first."""
    m = len(candidates)
    return [candidates[m - 1 - ((2 * g + 1) * m) // (2 * count)] for g in range(count)]


def _ensure_cancelled(plan: Plan) -> None:
    if any(f & CANCELLED for f in plan.flags):
        return
    old = [t for t in range(plan.tickets) if plan.start[t] < plan.settle_from - CANCEL_DELAY[1]]
    if not old:
        raise PlanError("history too short for a cancelled ticket: raise scale or span_days")
    plan.flags[old[len(old) // 2]] = CANCELLED


def _ensure_settled_hatthasilpa(plan: Plan, hat: list[GraphSpec]) -> None:
    """Enough settled hatthasilpa tickets for the problem tickets and the outbox rows.

    At a small scale a tenant has a dozen tickets, and some seeds leave too few of
    them settled and not classic; with many tenants some tenant always meets such a
    seed (one in ten at scale 0.2).  The newest settled classic tickets are then
    made hatthasilpa ones.
    """
    c = plan.counts
    groups = max(c[kind] for kind in (*PIECE_ANOMALIES, *EXTRA_TOKENS, "orphaned_stale"))
    needed = groups + c["quarantine_resolved"]  # one resolved quarantine row per ticket
    settled = [
        t for t in range(plan.tickets) if not plan.flags[t] and plan.start[t] < plan.settle_from
    ]
    have = sum(1 for t in settled if plan.kind[t] != CLASSIC and plan.size[t] >= PROBLEM_MIN_SIZE)
    convert = [t for t in settled if plan.kind[t] == CLASSIC and plan.size[t] >= PROBLEM_MIN_SIZE]
    for t in reversed(convert[len(convert) - max(0, needed - have) :]):
        spec = hat[t % len(hat)]
        plan.kind[t], plan.graph[t] = HAT, spec.id
        plan.sku[t] %= len(spec.skus)


def _place_anomalies(plan: Plan) -> None:
    c = plan.counts
    groups = max(c[kind] for kind in (*PIECE_ANOMALIES, *EXTRA_TOKENS, "orphaned_stale"))
    eligible = [
        t
        for t in range(plan.tickets)
        if plan.kind[t] != CLASSIC
        and not plan.flags[t]
        and plan.start[t] < plan.settle_from
        and plan.size[t] >= PROBLEM_MIN_SIZE
    ]
    if len(eligible) < groups:
        raise PlanError(
            f"only {len(eligible)} settled hatthasilpa tickets for {groups} "
            "problem tickets: raise scale or lower anomaly_rate"
        )
    for group, t in enumerate(_spread(eligible, groups)):
        plan.groups[t] = group
        plan.flags[t] |= PROBLEM
        if group < c["orphaned_stale"]:
            plan.orphans.setdefault(t, []).append("orphaned_stale")
    completed = [
        t for t in range(plan.tickets) if not plan.flags[t] and plan.start[t] < plan.settle_from
    ]
    if len(completed) < c["orphaned_completed"]:
        raise PlanError("too few completed tickets for the orphaned rows: raise scale")
    for t in _spread(completed, c["orphaned_completed"]):
        plan.orphans.setdefault(t, []).append("orphaned_completed")
    cancelled = [t for t in range(plan.tickets) if plan.flags[t] & CANCELLED]
    for j in range(c["orphaned_cancelled"]):
        plan.orphans.setdefault(cancelled[j % len(cancelled)], []).append("orphaned_cancelled")


def _place_outbox(plan: Plan) -> None:
    roles = [role for role in OUTBOX_ROLES for _ in range(plan.counts[role])]
    eligible = [t for t in range(plan.tickets) if plan.outbox_eligible(t)]
    serials = (
        s for t in reversed(eligible) for s in range(plan.first[t], plan.first[t] + plan.size[t])
    )
    for role, s in zip(roles, serials, strict=False):
        plan.outbox[s] = role
    quarantined = plan.counts["quarantine_resolved"]
    for t in _spread(eligible, min(quarantined, len(eligible))):
        plan.quarantine.add(plan.first[t])
    for t in eligible:  # fewer tickets than rows (a small scale): more pieces of each
        for s in range(plan.first[t] + 1, plan.first[t] + plan.size[t]):
            if len(plan.quarantine) >= quarantined:
                break
            plan.quarantine.add(s)
    if len(plan.outbox) < len(roles) or len(plan.quarantine) < quarantined:
        raise PlanError("too few settled tickets for the outbox rows: raise scale")


def _event_windows(plan: Plan, profile: Profile, graphs: list[GraphSpec]) -> None:
    """When token histories are full, brief (spawn + end) or archived (none)."""
    if profile.events is None:
        plan.full_from = min(plan.settle_from, plan.at - profile.history_days * DAY)
        if profile.archive_days is not None:
            plan.brief_from = plan.at - profile.archive_days * DAY
        return
    # Expected events of a token with a full history: spawn, 4 per node, the end.
    lengths = {g.id: len(g.steps) for g in graphs}
    route = sum(lengths[g] for g in plan.graph) / max(1, plan.tickets)
    full_cost = 4 * route + 2
    # Histories that stay full whatever the target: tickets still in progress, planted tokens.
    recent = sum(
        size for size, start in zip(plan.size, plan.start, strict=True) if start >= plan.settle_from
    )
    forced = len(plan.groups) * (len(PIECE_ANOMALIES) + len(EXTRA_TOKENS) + 3)
    target = profile.events - recent * full_cost - forced * full_cost / 2
    n = plan.n - recent  # the settled serials, oldest first
    if target >= n * full_cost:
        plan.full_from = -(2**62)
    elif target >= 2 * n:
        plan.full_from = _time_of(plan, n - (target - 2 * n) / (full_cost - 2))
    else:
        plan.brief_from = _time_of(plan, n - max(0.0, target) / 2)


def _time_of(plan: Plan, index: float) -> int:
    """The start time of tickets around serial index `index`."""
    index = min(max(index, 0.0), float(plan.n))
    return min(plan.settle_from, plan.at - plan.span + math.floor(plan.span * index / plan.n))
