"""Job `serial_outbox`: retry the core links queued in a tenant's `serial_link_outbox`.

One run takes the tenant's due rows (`pending`, `next_attempt_at` NULL or past,
in UTC, like every serial table), oldest first, at most `batch_size`, and claims them so that
no other worker takes them (see `outbox_store.claim`).  The claim is held until
the outcome of every claimed row is written in the same tenant transaction.

Linking is set-based (`outbox_store.link`): one UPDATE in one core
transaction links the whole batch, guarded by the tenant, the production type
and `dag_token_id IS NULL`; unless it linked every serial, the registry rows are
read back in that transaction.  Each row is then classified from that registry
state:

- linked to its own token: `done` (also when it already was: idempotent);
- linked to another token, or production type not hatthasilpa: `dead` at once,
  the reason in `last_error`;
- no registry row for this tenant: retryable, `next_attempt_at = now +
  backoff[retry_count]` (the last step repeats) with +-`backoff_jitter`, in
  whole seconds; `dead` when `retry_count` reaches `max_retries`;
- a serial_code that cannot be a registry key (empty, over 64 characters,
  leading or trailing blanks): `dead` at once;
- a poison row, one that can never succeed as read (`outbox_store.row_problem`:
  NULL or non-positive `dag_token_id`, NULL serial_code, control characters or
  bytes that are not UTF-8 in it): `dead` at once, never sent to core, named in
  a `bad_row` warning and counted in `bad_rows` too.  It never blocks the rows
  behind it: they are linked in the same run.

Every failed attempt, permanent or not, adds one to `retry_count` and sets
`last_error`.  When two claimed rows name one serial, the oldest row's token is
the one linked; the other then fails as linked to another token.

`retried` counts the rows attempted; each ends in exactly one of `succeeded`,
`failed_retry` (still pending, later) or `marked_dead`.  A core database error
(unreachable, lock timeout) stops the tenant's batch, counts one error and
leaves the claimed rows exactly as they were: no retry is burned.

Crash safety: the core commit precedes the outbox update.  A crash between the
two rolls the tenant transaction back, so the rows stay pending; the next run
finds the registry already linked to the same token (the guard `dag_token_id IS
NULL` never overwrites a link) and marks them done.

Fault injection, for tests only: when the environment variable
`BGWORKERS_FAULT` is `outbox_after_core_link`, the process SIGKILLs itself right
after the core commit.  Without that variable the hook does nothing.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from bgworkers.engine.job import Counters, JobContext
from bgworkers.jobs.outbox.sql import write_transaction
from bgworkers.jobs.outbox.store import (
    HATTHASILPA,
    CoreUnavailable,
    Item,
    RegistryState,
    claim,
    due_items,
    is_registry_key,
    link,
    record,
    row_problem,
    simulate_link,
)
from bgworkers.jobs.serials.format import shown
from bgworkers.settings import SerialOutboxSettings

COUNTERS = (
    "pending_found",
    "retried",
    "succeeded",
    "failed_retry",
    "marked_dead",
    "bad_rows",
    "errors",
)
FAULT_ENV = "BGWORKERS_FAULT"
FAULT_AFTER_CORE_LINK = "outbox_after_core_link"
DEAD_EVENT_SAMPLE = 20  # rows named in the `outbox_rows_dead` event
BAD_ROWS_NAMED = 100  # `bad_row` events per tenant run

#: Source of the backoff jitter; tests seed it to predict next_attempt_at exactly.
rng = random.Random()

Kind = Literal["done", "retry", "dead"]


@dataclass
class Plan:
    """What to write for a batch: ids to mark done, and per failed id its new state."""

    done: list[int] = field(default_factory=list)
    #: id -> (status 'pending' or 'dead', last_error, next_attempt_at)
    failed: dict[int, tuple[str, str, datetime | None]] = field(default_factory=dict)
    counters: Counters = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    bad: list[tuple[Item, str]] = field(default_factory=list)  # poison rows and their problem


def classify(item: Item, state: RegistryState | None, tenant_id: int) -> tuple[Kind, str]:
    """The outcome of one outbox row given the registry state read back after linking."""
    problem = row_problem(item)
    return ("dead", problem) if problem is not None else _classify(item, state, tenant_id)


def _classify(item: Item, state: RegistryState | None, tenant_id: int) -> tuple[Kind, str]:
    """`classify` of a row that is not a poison row."""
    if item.serial is None or not is_registry_key(item.serial):
        return "dead", "serial_code cannot be a registry key (empty, over 64 chars or padded)"
    if state is None:
        return "retry", f"no serial_registry row for tenant {tenant_id}"
    if state.tenant_id != tenant_id:
        return "retry", (
            f"no serial_registry row for tenant {tenant_id} "
            f"(the serial is registered to tenant {state.tenant_id})"
        )
    if state.dag_token_id == item.token:
        return "done", ""
    if state.production_type != HATTHASILPA:
        return "dead", f"production_type is {state.production_type!r}, not hatthasilpa"
    if state.dag_token_id is not None:
        return "dead", f"serial already linked to another token ({state.dag_token_id})"
    return "retry", "registry row still unlinked after the update"


def next_attempt(
    now: datetime, retry_count: int, cfg: SerialOutboxSettings, rnd: random.Random
) -> datetime:
    """`now + backoff[retry_count]` (last step repeats), +-jitter, in whole seconds.

    Whole seconds because MySQL DATETIME keeps no fraction: the value written is
    the value read back, on every backend, and it stays inside the window.
    """
    base = cfg.backoff[min(retry_count, len(cfg.backoff) - 1)].total_seconds()
    low, high = base * (1 - cfg.backoff_jitter), base * (1 + cfg.backoff_jitter)
    delay = round(base * (1 + rnd.uniform(-cfg.backoff_jitter, cfg.backoff_jitter)))
    return now + timedelta(seconds=min(max(delay, math.ceil(low)), math.floor(high)))


def plan(
    items: Sequence[Item],
    states: Mapping[str, RegistryState],
    tenant_id: int,
    now: datetime,
    cfg: SerialOutboxSettings,
    rnd: random.Random,
) -> Plan:
    result = Plan()
    counters = result.counters
    for item in items:
        counters["retried"] += 1
        problem = item.problem
        if problem is None:
            state = None if item.serial is None else states.get(item.serial)
            kind, error = _classify(item, state, tenant_id)
        else:
            result.bad.append((item, problem))
            counters["bad_rows"] += 1
            kind, error = "dead", problem
        attempts = item.retry_count + 1
        if kind == "done":
            result.done.append(item.id)
            counters["succeeded"] += 1
        elif kind == "retry" and attempts < cfg.max_retries:
            result.failed[item.id] = (
                "pending",
                error,
                next_attempt(now, item.retry_count, cfg, rnd),
            )
            counters["failed_retry"] += 1
        else:
            if kind == "retry":
                error = f"{error}; gave up after {attempts} attempts"
            result.failed[item.id] = ("dead", error, None)
            counters["marked_dead"] += 1
    return result


def run(ctx: JobContext[SerialOutboxSettings]) -> Counters:
    cfg = ctx.job_settings
    now = ctx.utc_now.replace(microsecond=0)
    if ctx.dry_run:
        return _preview(ctx, cfg, now)
    counters = dict.fromkeys(COUNTERS, 0)
    ctx.check_lease()
    try:
        with write_transaction(ctx.db) as conn:
            items = claim(conn, now, cfg.batch_size)
            counters["pending_found"] = len(items)
            if not items:
                return counters
            ctx.check_lease()
            states = link(ctx.core, ctx.tenant.id, items)
            fault_point(FAULT_AFTER_CORE_LINK)
            result = plan(items, states, ctx.tenant.id, now, cfg, rng)
            ctx.check_lease()
            record(conn, result.done, result.failed, now)
    except CoreUnavailable as exc:
        # The tenant transaction rolled back: claims released, no row touched.
        counters["errors"] += 1
        ctx.part_failed(f"{counters['pending_found']} due row(s) left pending", str(exc))
        ctx.log.warning(
            "outbox_core_unavailable", error=str(exc), rows_left_pending=counters["pending_found"]
        )
        return counters
    _log_bad(ctx, result, dry_run=False)
    _log_dead(ctx, items, result)
    counters.update({k: v for k, v in result.counters.items() if k != "pending_found"})
    return counters


def _preview(
    ctx: JobContext[SerialOutboxSettings], cfg: SerialOutboxSettings, now: datetime
) -> Counters:
    """Dry run: what a run would do now, from plain reads; nothing is claimed or written."""
    counters = dict.fromkeys(COUNTERS, 0)
    with ctx.db.connect() as conn:
        items = due_items(conn, now, cfg.batch_size)
    counters["pending_found"] = len(items)
    if not items:
        return counters
    try:
        states = simulate_link(ctx.core, ctx.tenant.id, items)
    except CoreUnavailable as exc:
        counters["errors"] += 1
        ctx.part_failed("preview of the core links", str(exc))
        ctx.log.warning("outbox_core_unavailable", error=str(exc), dry_run=True)
        return counters
    # Its own generator: a preview never moves the jitter sequence of real runs.
    result = plan(items, states, ctx.tenant.id, now, cfg, random.Random(0))
    _log_bad(ctx, result, dry_run=True)
    counters.update({k: v for k, v in result.counters.items() if k != "pending_found"})
    return counters


def _log_bad(ctx: JobContext[SerialOutboxSettings], result: Plan, dry_run: bool) -> None:
    for item, problem in result.bad[:BAD_ROWS_NAMED]:
        ctx.log.warning(
            "bad_row",
            table="serial_link_outbox",
            id=item.id,
            problem=problem,
            value=shown(item.serial),
            skipped="the link (row marked dead)",
            dry_run=dry_run,
        )
    if len(result.bad) > BAD_ROWS_NAMED:
        ctx.log.warning(
            "bad_rows_not_named", named=BAD_ROWS_NAMED, count=len(result.bad) - BAD_ROWS_NAMED
        )


def _log_dead(ctx: JobContext[SerialOutboxSettings], items: Sequence[Item], result: Plan) -> None:
    dead = [
        (item, result.failed[item.id][1])
        for item in items
        if result.failed.get(item.id, ("",))[0] == "dead"
    ]
    if dead:
        ctx.log.error(
            "outbox_rows_dead",
            count=len(dead),
            rows=[
                {"id": item.id, "serial": shown(item.serial), "token": item.token, "reason": reason}
                for item, reason in dead[:DEAD_EVENT_SAMPLE]
            ],
        )


def fault_point(name: str) -> None:
    """Test-only crash hook: SIGKILL this process when BGWORKERS_FAULT names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
