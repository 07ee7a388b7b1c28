"""The rows made on purpose: planted cases, legacy serials, outbox and quarantine history.

Every function writes through a TenantGenerator and counts what it planted
in `gen.found`, which the generator checks against the plan.  The tokens of
planted cases are forced live (they sit in problem tickets that are on hold),
so the serial consistency job meets each of them exactly once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from random import Random
from typing import Protocol

from bgworkers.demo import serialgen as sg
from bgworkers.demo.catalog import Org
from bgworkers.demo.flow import FULL, LIVE, Flow, Ticket
from bgworkers.demo.plan import EXTRA_TOKENS, Plan
from bgworkers.demo.stamps import DAY, HOUR, MINUTE, Stamps
from bgworkers.demo.writer import BulkWriter


class TenantGenerator(Protocol):
    """What planting uses of `tenant.TenantGenerator`, which calls the functions here."""

    org: Org
    plan: Plan
    rng: Random
    flow: Flow
    maker: sg.SerialMaker
    ts: Stamps
    tw: BulkWriter
    found: Counter[str]
    extra_index: int
    next_outbox: int
    next_quarantine: int

    def add_serial(
        self, c: Ticket, serial: str, seq: int, spawned_at: str | None, token: int | None
    ) -> None: ...

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
    ) -> None: ...


QUARANTINE_REASONS = ("checksum_fail", "duplicate", "invalid_format", "hash_fail")
BACKOFF = (MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 6 * HOUR)


def anomaly(
    gen: TenantGenerator, c: Ticket, j: int, role: str, serial: str, t_sp: int
) -> tuple[str, int, int, str, int | None]:
    """A case on piece j of a problem ticket -> (serial, spawn time, token, status, link)."""
    flow, group = gen.flow, c.group or 0
    if role == "invalid_format":
        serial = sg.invalid_format(serial, gen.found[role])
    elif role == "checksum_fail":
        serial = sg.bad_checksum(serial)
    link_to = None
    if role == "registry_mismatch":  # made, scrapped, made again; the registry kept the first
        link_to, _ = flow.token(c.id, "piece", serial, c.route, t_sp, FULL, force="scrapped")
        t_sp += gen.rng.randint(2 * HOUR, DAY)
    force = LIVE[(group + j) % len(LIVE)]
    tid, status = flow.token(c.id, "piece", serial, c.route, t_sp, FULL, force=force)
    if role == "duplicate":  # the same serial on a second live piece token
        force = LIVE[(group + j + 1) % len(LIVE)]
        copy = flow.token(c.id, "piece", serial, c.route, t_sp + HOUR, FULL, force=force)
        c.statuses.append(copy[1])
    gen.found[role] += 1
    return serial, t_sp, tid, status, link_to


def extra_tokens(gen: TenantGenerator, c: Ticket, group: int) -> None:
    """Live tokens of a problem ticket that have no job_ticket_serial row."""
    flow, rng = gen.flow, gen.rng
    when = datetime.fromtimestamp(c.start, UTC)
    for m, kind in enumerate(gen.plan.group_kinds(group, EXTRA_TOKENS)):
        t0 = c.start + rng.randint(HOUR, DAY)
        ttype, route, serial = "piece", c.route, ""
        if kind == "component_bad_parent":  # its parent fails the checksum: not exempt
            ttype, route = "component", c.route[:3]
            serial = sg.component_serial(sg.bad_checksum(c.clean_serial), group)
        elif kind == "legacy_component":
            ttype, route = "component", c.route[:3]
            serial = sg.component_serial(c.clean_serial, group + 1)
        elif kind == "legacy_temp":
            serial = sg.temp_serial(gen.org.serial_code, c.yyyymmdd, group)
        elif kind == "legacy_year":
            serial = sg.legacy_serial(gen.org.legacy_prefix, when.year - 3, group)
        elif kind == "legacy_mo":
            serial = sg.mo_serial(gen.org.serial_code, f"{when:%y%m}", c.id, group % 100)
        if kind == "legacy_lot":  # a batch serial, registered with scope 'batch'
            serial = sg.lot_serial(gen.org.serial_code, c.yyyymmdd, c.sku, group)
            tid, status = flow.batch(c.id, c.route[0], t0, t0 + DAY, FULL, serial, "active")
            signature = sg.signature(serial, c.reg_type)
            gen.register(c, serial, gen.org, tid, "active", signature, None, "batch")
        else:
            force = LIVE[(group + m) % len(LIVE)]
            tid, status = flow.token(c.id, ttype, serial, route, t0, FULL, force=force)
        c.statuses.append(status)
        gen.found[kind] += 1


def orphan(gen: TenantGenerator, c: Ticket, m: int, variant: str) -> None:
    """A serial the ticket generated and never used (registered, never linked)."""
    s = gen.extra_index
    gen.extra_index += 1
    serial = gen.maker.serial(c.head, c.head_sum, s)
    gen.add_serial(c, serial, c.size + m + 1, None, None)
    signature = sg.signature(serial, c.reg_type)
    gen.register(c, serial, gen.org, None, "reserved", signature, serial[-1], "piece")
    gen.found[variant] += 1


def outbox_row(gen: TenantGenerator, box: str, s: int, serial: str, tid: int, t_sp: int) -> None:
    """A serial_link_outbox row in the state `box` names (done, pending due or not, dead)."""
    rng, at, utc, tenant_id = gen.rng, gen.plan.at, gen.ts.utc, gen.org.id
    dag, retries, error, nxt = tid, 0, None, None
    if box == "outbox_done":
        status, created = "done", t_sp + rng.randint(1, 120)
        updated = created + rng.randint(1, 90)
    elif box == "outbox_due_new":  # never tried; the registry row waits unlinked
        status, created = "pending", at - rng.randint(MINUTE, 50 * MINUTE)
        updated = created
    elif box == "outbox_due_retry":  # failed before, due again; still no registry row
        status, retries = "pending", rng.randint(1, 3)
        nxt = at - rng.randint(MINUTE, 30 * MINUTE)
        updated = nxt - BACKOFF[retries - 1]
        created = updated - sum(BACKOFF[: retries - 1]) - rng.randint(0, 600)
        error = f"no serial_registry row for tenant {tenant_id} yet"
    elif box == "outbox_future":  # core was down; the retry is not due yet
        status, retries = "pending", rng.randint(1, 4)
        nxt = at + rng.randint(5 * MINUTE, 5 * HOUR)
        updated = at - rng.randint(MINUTE, HOUR)
        created = updated - sum(BACKOFF[:retries])
        error = "core database unreachable: (2013, 'Lost connection to server during query')"
    elif s % 2 == 0:  # dead: gave up, the registry row never appeared
        status, retries = "dead", 10
        created = at - rng.randint(3 * DAY, 20 * DAY)
        updated = created + sum(BACKOFF) + 5 * BACKOFF[-1]
        error = f"no serial_registry row for tenant {tenant_id} after 10 retries"
    else:  # dead: queued with the wrong token; the registry is linked to the right one
        status, dag = "dead", tid - 1 if tid > 1 else tid + 1
        created = t_sp + rng.randint(MINUTE, HOUR)
        updated = created + MINUTE
        error = f"serial_registry row is linked to another token ({tid})"
    next_at = None if nxt is None else utc(nxt)
    gen.tw.buffers["serial_link_outbox"].append(
        (gen.next_outbox, serial, dag, status, retries, error, utc(created), utc(updated), next_at)
    )
    gen.next_outbox += 1
    gen.found[box] += 1


def quarantine_row(gen: TenantGenerator, serial: str, tid: int, t_sp: int) -> None:
    """A case found and resolved long ago (no open quarantine row is planted)."""
    detected = t_sp + gen.rng.randint(HOUR, 3 * DAY)
    resolved = detected + gen.rng.randint(HOUR, 2 * DAY)
    reason = QUARANTINE_REASONS[gen.found["quarantine_resolved"] % len(QUARANTINE_REASONS)]
    gen.tw.buffers["serial_quarantine"].append(
        (gen.next_quarantine, serial, "flow_token", tid, reason, gen.ts.utc(detected),
         gen.ts.utc(resolved))
    )  # fmt: skip
    gen.next_quarantine += 1
    gen.found["quarantine_resolved"] += 1
