"""`bgworkers outbox requeue|stats`: operator tools for the serial link outbox.

Each function prints through `out` and returns the exit status: 0 ok, 1 some
of what was asked could not be done (named in the output), 2 bad usage (a
tenant that tenancy.resolve refuses, neither or both of ids / all_dead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.engine.clock import Clock, SystemClock, naive_utc
from bgworkers.engine.tenancy import (
    Databases,
    Tenant,
    TenantError,
    TenantProblem,
    discover,
    resolve,
)
from bgworkers.jobs.outbox.sql import ids_of, write_transaction
from bgworkers.jobs.outbox.store import due
from bgworkers.schema.tenant import serial_link_outbox as outbox
from bgworkers.settings import Settings

Out = Callable[[str], None]
SHOWN_IDS = 20  # ids listed in a requeue message; more are counted
_IDS = ids_of("ids")


def _utc_now(clock: Clock) -> datetime:
    """Naive UTC, as the serial tables store their times."""
    return naive_utc(clock.now()).replace(microsecond=0)


def _named(settings: Settings, dbs: Databases, code: str, out: Out) -> Tenant | None:
    """The tenant named on the command line, exactly as the daemon serves it (see
    tenancy.resolve); None, with the reason printed, when it cannot be used."""
    try:
        return resolve(settings, dbs.core, code)
    except TenantError as exc:
        out(str(exc))
        return None


def _failed(code: str, exc: SQLAlchemyError, out: Out) -> int:
    reason = error_line(exc)
    out(f"tenant {code}: FAILED: {reason}")
    return 1


def _id_list(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    more = len(ids) - SHOWN_IDS
    return f"{shown} and {more} more" if more > 0 else shown


def requeue(
    settings: Settings,
    dbs: Databases,
    tenant_code: str,
    ids: list[int] | None,
    all_dead: bool,
    dry_run: bool,
    out: Out,
    clock: Clock | None = None,
) -> int:
    """Put dead rows back to pending with a fresh retry budget (retry_count 0, due now)."""
    if bool(ids) == all_dead:
        out("give either --id N ... or --all-dead (one of them)")
        return 2
    try:
        tenant = _named(settings, dbs, tenant_code, out)
        if tenant is None:
            return 2
        now = _utc_now(clock or SystemClock())
        with write_transaction(dbs.tenant(tenant.code)) as conn:
            dead, problems = _dead_rows(conn, None if all_dead else ids)
            if not dry_run and dead:
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == _IDS.c.id, outbox.c.status == "dead")
                    .values(status="pending", retry_count=0, next_attempt_at=None, updated_at=now),
                    _IDS.bind(conn, [(i,) for i in dead]),
                )
    except SQLAlchemyError as exc:
        return _failed(tenant_code, exc, out)
    for problem in problems:
        out(f"tenant {tenant_code}: {problem}")
    verb = "would requeue" if dry_run else "requeued"
    if dead:
        out(f"tenant {tenant_code}: {verb} {len(dead)} dead row(s): ids {_id_list(dead)}")
    else:
        out(f"tenant {tenant_code}: {verb} 0 rows (no dead row matched)")
    return 1 if problems else 0


def _dead_rows(conn: Connection, ids: list[int] | None) -> tuple[list[int], list[str]]:
    """Ids to requeue (locked until the transaction ends) and why others are left alone."""
    query = select(outbox.c.id, outbox.c.status).order_by(outbox.c.id).with_for_update()
    if ids is None:
        return list(conn.execute(query.where(outbox.c.status == "dead")).scalars()), []
    wanted = sorted(set(ids))
    named = query.where(outbox.c.id == _IDS.c.id)
    rows = conn.execute(named, _IDS.bind(conn, [(i,) for i in wanted]))
    found = {int(r.id): str(r.status) for r in rows}
    problems = [
        f"id {i}: no such outbox row"
        if i not in found
        else f"id {i}: status {found[i]}, not dead: left alone"
        for i in wanted
        if found.get(i) != "dead"
    ]
    return [i for i in wanted if found.get(i) == "dead"], problems


def format_age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


STATS_HEADER = f"{'tenant':<20} {'pending':>8} {'due':>8} {'done':>10} {'dead':>8}  oldest pending"


def stats(
    settings: Settings,
    dbs: Databases,
    tenant_code: str | None,
    out: Out,
    clock: Clock | None = None,
) -> int:
    """Counts per status, how many pending rows are due now, age of the oldest pending row."""
    now = _utc_now(clock or SystemClock())
    refused: list[TenantProblem] = []
    try:
        if tenant_code is not None:
            tenant = _named(settings, dbs, tenant_code, out)
            if tenant is None:
                return 2
            codes = [tenant.code]
        else:
            tenants, refused = discover(settings, dbs.core)
            codes = [t.code for t in tenants]
    except SQLAlchemyError as exc:
        out(f"core: FAILED: {error_line(exc)}")
        return 1
    status = 0
    for problem in refused:  # refused tenants are failures: their rows go unprocessed
        out(f"tenant {problem.code}: {problem.error}")
        status = 1
    out(STATS_HEADER)
    for code in codes:
        try:
            out(_stats_line(dbs, code, now))
        except SQLAlchemyError as exc:
            status = _failed(code, exc, out)
    return status


@dataclass(frozen=True)
class OutboxState:
    pending: int
    due: int
    done: int
    dead: int
    oldest_pending: datetime | None  # naive UTC


def outbox_state(dbs: Databases, code: str, now: datetime) -> OutboxState:
    """Counts per status, pending rows due at `now`, the oldest pending row's creation."""
    query = select(
        outbox.c.status,
        func.count(),
        func.min(outbox.c.created_at),
        func.sum(case((due(now), 1), else_=0)),
    ).group_by(outbox.c.status)
    with dbs.tenant(code).connect() as conn:
        rows = {str(r[0]): (int(r[1]), r[2], int(r[3] or 0)) for r in conn.execute(query)}
    pending, oldest, due_now = rows.get("pending", (0, None, 0))
    done, dead = (rows.get(s, (0, None, 0))[0] for s in ("done", "dead"))
    return OutboxState(pending, due_now, done, dead, oldest)


def _stats_line(dbs: Databases, code: str, now: datetime) -> str:
    state = outbox_state(dbs, code, now)
    oldest = state.oldest_pending
    age = f"{format_age(now - oldest)} (since {oldest:%Y-%m-%d %H:%M:%S} UTC)" if oldest else "-"
    return f"{code:<20} {state.pending:>8} {state.due:>8} {state.done:>10} {state.dead:>8}  {age}"
