"""Run history in `bgw_run`: one row per (job, tenant, tick).

The row's unique (job, tenant, tick_at) key is the claim that makes a tick run
at most once per tenant however many replicas fire it: whoever inserts first
runs it.  A replica that cannot run a tick records why (`missed`), and that row
is no claim: a replica that can run the tick takes it over.  Start and end times
are on the database clock, like leases, so runs recorded by different hosts
compare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from bgworkers.db import db_now, transaction
from bgworkers.engine.clock import naive_utc
from bgworkers.schema.own import run as run_table


class RunStatus(StrEnum):
    """What happened to one (job, tenant, tick); every state but RUNNING is final."""

    RUNNING = "running"
    OK = "ok"  # all of its work done
    PARTIAL = "partial"  # ran to the end, but parts of its work failed (named in `error`)
    FAILED = "failed"  # stopped by an error
    TIMED_OUT = "timed_out"  # stopped at its runtime limit
    INTERRUPTED = "interrupted"  # stopped because the daemon shut down
    ABANDONED = "abandoned"  # its holder vanished; another run took the lease over
    SKIPPED = "skipped"  # not run: the lease was held by another run
    MISSED = "missed"  # not run: too late, previous run still going, or dropped at shutdown

    @property
    def failing(self) -> bool:
        """A run that did not do its work (status reports it CRITICAL)."""
        return self in FAILING


FAILING = frozenset({RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.ABANDONED})
RUNNING, OK, FAILED, SKIPPED, MISSED = (
    RunStatus.RUNNING,
    RunStatus.OK,
    RunStatus.FAILED,
    RunStatus.SKIPPED,
    RunStatus.MISSED,
)
_STILL_RUNNING = run_table.c.status == RUNNING.value


def claim(
    conn: Connection,
    job: str,
    tenant: str,
    tick_at: datetime,
    run_id: str,
    host: str,
    pid: int,
    status: RunStatus = RUNNING,
    error: str | None = None,
) -> bool:
    """Give this run the tick, in `conn`'s transaction; False when another run has it.

    A `missed` row is no claim: it only says why this tick did not run on the
    replica that wrote it, so a replica that can run the tick takes the row over.
    A row that is not RUNNING (e.g. SKIPPED) is written closed.
    """
    c = run_table.c
    values = {
        "run_id": run_id,
        "host": host,
        "pid": pid,
        "started_at": db_now(conn),
        "ended_at": None if status == RUNNING else db_now(conn),
        "status": status.value,
        "counters": None,
        "error": error,
    }
    try:
        conn.execute(insert(run_table).values(job=job, tenant=tenant, tick_at=tick_at, **values))
        return True
    except IntegrityError:  # only this statement failed: the transaction goes on
        return (
            conn.execute(
                update(run_table)
                .where(
                    c.job == job, c.tenant == tenant, c.tick_at == tick_at, c.status == MISSED.value
                )
                .values(**values)
            ).rowcount
            == 1
        )


def finish(
    bind: Engine | Connection,
    run_id: str,
    status: RunStatus,
    counters: Mapping[str, int] | None = None,
    error: str | None = None,
) -> bool:
    """Close a running row.  False when it was no longer running: another holder has
    already recorded its end (e.g. abandoned after a takeover), which stays as it is."""
    with transaction(bind) as conn:
        return bool(
            conn.execute(
                update(run_table)
                .where(run_table.c.run_id == run_id, _STILL_RUNNING)
                .values(
                    status=status.value,
                    ended_at=db_now(conn),
                    counters=json.dumps(dict(counters)) if counters is not None else None,
                    error=error[:65000] if error else None,
                )
            ).rowcount
        )


def record_missed(
    engine: Engine,
    job: str,
    tenant: str,
    tick_at: datetime,
    run_id: str,
    host: str,
    pid: int,
    reason: str,
) -> bool:
    """A tick this replica did not run.  A no-op when another run has the tick; a replica
    that can run it later takes the row over (`claim`).  When `run_id` itself holds the
    tick (its claim committed but the answer was lost), that row is closed missed."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(run_table).values(
                    job=job,
                    tenant=tenant,
                    tick_at=tick_at,
                    run_id=run_id,
                    host=host,
                    pid=pid,
                    started_at=db_now(conn),
                    ended_at=db_now(conn),
                    status=MISSED.value,
                    error=reason,
                )
            )
    except IntegrityError:
        return finish(engine, run_id, MISSED, None, reason)
    return True


def mark_abandoned(conn: Connection, run_id: str, by_holder: str) -> int:
    """The run whose lease expired (its process died or lost the network) did not finish."""
    return conn.execute(
        update(run_table)
        .where(run_table.c.run_id == run_id, _STILL_RUNNING)
        .values(
            status=RunStatus.ABANDONED.value,
            ended_at=db_now(conn),
            error=f"abandoned: lease expired, taken over by {by_holder}",
        )
    ).rowcount


def last_ticks(engine: Engine, job: str) -> dict[str, datetime]:
    """The latest recorded tick (naive UTC) of `job` per tenant, whatever its outcome."""
    c = run_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.tenant, func.max(c.tick_at)).where(c.job == job).group_by(c.tenant)
        ).all()
    return {str(tenant): at for tenant, at in rows if isinstance(at, datetime)}


def prune(engine: Engine, older_than: datetime, batch: int = 5000) -> int:
    """Delete history older than `older_than` (naive UTC) in bounded batches."""
    total = 0
    while True:
        with engine.begin() as conn:
            ids: list[int] = list(
                conn.execute(
                    select(run_table.c.id).where(run_table.c.started_at < older_than).limit(batch)
                ).scalars()
            )
            if not ids:
                return total
            total += conn.execute(delete(run_table).where(run_table.c.id.in_(ids))).rowcount


def retention_cutoff(now: datetime, retention: timedelta) -> datetime:
    return naive_utc(now - retention)
