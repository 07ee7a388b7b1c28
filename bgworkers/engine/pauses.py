"""Pauses: an operator stops a job for one tenant or for all, without touching settings.

A pause is a row of `bgw_pause` in the coordination database, so every replica
obeys it.  The runner reads the pauses of a job once per tick (`for_tick`); a
paused tenant is not run and its tick gets a `skipped` history row whose error
says "paused by <who> since <when>: <reason>" (`record_paused`), so history shows
why nothing ran and another replica (even one that could not read the pauses)
finds the tick taken.  A pause for all tenants has tenant `*`; a tenant is
paused when either its own pause or the `*` pause exists.  Dry runs ignore
pauses: they only read.

`pause` / `resume` are the operator commands; they print through `out` and
return the exit status: 0 done (or nothing to do), 1 the database could not be
written, or the tenant stays paused by the pause for all tenants, 2 bad usage
(a tenant `tenancy.resolve` refuses).  `resume JOB` without a tenant lifts every
pause of the job.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bgworkers.db import db_now, error_line, limits
from bgworkers.engine import history
from bgworkers.engine.clock import aware_utc
from bgworkers.engine.history import RunStatus
from bgworkers.engine.logs import get_logger
from bgworkers.engine.tenancy import Databases, TenantError, resolve
from bgworkers.schema.own import ALL_TENANTS
from bgworkers.schema.own import pause as pause_table
from bgworkers.settings import Settings

log = get_logger("bgworkers.pauses")
Out = Callable[[str], None]
#: Limit of the pause read of a tick, and of the operator commands' statements.
READ_LIMIT = 10.0
#: Pauses read per tick at most (one per tenant and one for all: far below this).
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Pause:
    job: str
    tenant: str  # a tenant code, or ALL_TENANTS
    paused_at: datetime  # aware UTC
    paused_by: str
    reason: str | None

    @property
    def for_all(self) -> bool:
        return self.tenant == ALL_TENANTS

    def describe(self) -> str:
        """paused by <who> since <when>: <reason>"""
        text = f"paused by {self.paused_by} since {self.paused_at:%Y-%m-%d %H:%M:%S} UTC"
        return f"{text}: {self.reason}" if self.reason else text

    def as_json(self) -> dict[str, object]:
        return {
            "job": self.job,
            "tenant": None if self.for_all else self.tenant,
            "all_tenants": self.for_all,
            "paused_at": self.paused_at.isoformat(timespec="seconds"),
            "paused_by": self.paused_by,
            "reason": self.reason,
        }


def read(engine: Engine, job: str | None = None) -> dict[tuple[str, str], Pause]:
    """Every pause (of `job`), keyed (job, tenant); one bounded query.  Raises
    SQLAlchemyError when the coordination database cannot be read."""
    c = pause_table.c
    query = select(c.job, c.tenant, c.paused_at, c.paused_by, c.reason).limit(MAX_ROWS)
    if job is not None:
        query = query.where(c.job == job)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {
        (r.job, r.tenant): Pause(r.job, r.tenant, aware_utc(r.paused_at), r.paused_by, r.reason)
        for r in rows
    }


def find(pauses: Mapping[tuple[str, str], Pause], job: str, tenant: str) -> Pause | None:
    """The pause that stops (job, tenant): its own, else the one for all tenants."""
    return pauses.get((job, tenant)) or pauses.get((job, ALL_TENANTS))


def for_tick(engine: Engine, job: str) -> dict[tuple[str, str], Pause]:
    """The pauses of `job` for a tick; none (and a warning) when they cannot be read:
    a pause must never stop jobs because the coordination database hiccuped."""
    try:
        with limits.limited(READ_LIMIT):
            return read(engine, job)
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        log.warning(
            "pauses_unreadable",
            job=job,
            error=f"{type(exc).__name__}: {error_line(exc)}",
            detail="running every tenant as if nothing were paused",
        )
        return {}


def record_paused(
    engine: Engine,
    job: str,
    tenant: str,
    tick_at: datetime,
    run_id: str,
    host: str,
    pid: int,
    pause: Pause,
) -> bool:
    """The `skipped` history row of a paused tenant's tick (taking over a `missed` row, as
    any claim does); False when another replica already has this tick."""
    with engine.begin() as conn:
        return history.claim(
            conn, job, tenant, tick_at, run_id, host, pid, RunStatus.SKIPPED, pause.describe()
        )


# ------------------------------------------------------------------ operator commands


def operator() -> str:
    """Who pauses: the login behind sudo if any, at this host."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _whom(tenant: str) -> str:
    return "all tenants" if tenant == ALL_TENANTS else f"tenant {tenant}"


def _tenant(settings: Settings, dbs: Databases, code: str | None, out: Out) -> str | None:
    """The tenant key of a pause: a code `resolve` accepts, or ALL_TENANTS."""
    if code is None:
        return ALL_TENANTS
    try:
        with limits.limited(READ_LIMIT):
            return resolve(settings, dbs.core, code).code
    except TenantError as exc:
        out(str(exc))
        return None


def _failed(exc: BaseException, out: Out) -> int:
    hint = ""
    if "bgw_pause" in str(exc):
        hint = " (has `bgworkers db upgrade` created the table bgw_pause?)"
    out(f"coordination database: FAILED: {error_line(exc)}{hint}")
    return 1


def pause(
    settings: Settings,
    dbs: Databases,
    job: str,
    tenant_code: str | None,
    reason: str | None,
    out: Out,
    by: str | None = None,
) -> int:
    try:
        tenant = _tenant(settings, dbs, tenant_code, out)
        if tenant is None:
            return 2
        engine = dbs.coordination
        reason = (reason or "").strip()[:500] or None
        with limits.limited(READ_LIMIT):
            try:
                with engine.begin() as conn:
                    conn.execute(
                        insert(pause_table).values(
                            job=job,
                            tenant=tenant,
                            paused_at=db_now(engine),
                            paused_by=by or operator(),
                            reason=reason,
                        )
                    )
                created = True
            except IntegrityError:
                created = False
            now = read(engine, job)
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        return _failed(exc, out)
    this = now.get((job, tenant))
    if this is None:  # resumed meanwhile by someone else
        out(f"{job}: not paused for {_whom(tenant)}: resumed meanwhile")
        return 1
    verb = "paused" if created else "already paused (left as it was)"
    out(f"{job}: {verb} for {_whom(tenant)}: {this.describe()}")
    if tenant != ALL_TENANTS and (every := now.get((job, ALL_TENANTS))) is not None:
        out(f"{job}: also paused for all tenants: {every.describe()}")
    return 0


def resume(settings: Settings, dbs: Databases, job: str, tenant_code: str | None, out: Out) -> int:
    """Lift the tenant's pause; without a tenant, every pause of the job (for all
    tenants and for single ones), so that the job runs everywhere again."""
    try:
        tenant = _tenant(settings, dbs, tenant_code, out)
        if tenant is None:
            return 2
        engine = dbs.coordination
        c = pause_table.c
        with limits.limited(READ_LIMIT):
            before = read(engine, job)
            with engine.begin() as conn:
                query = delete(pause_table).where(c.job == job)
                if tenant != ALL_TENANTS:
                    query = query.where(c.tenant == tenant)
                conn.execute(query)
            after = read(engine, job)
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        return _failed(exc, out)
    lifted = [
        p
        for key, p in sorted(before.items())
        if key not in after and (tenant == ALL_TENANTS or p.tenant == tenant)
    ]
    for was in lifted:
        out(f"{job}: resumed for {_whom(was.tenant)} (was {was.describe()})")
    if not lifted:
        out(f"{job}: was not paused for {_whom(tenant)}: nothing to resume")
    if tenant != ALL_TENANTS and (every := after.get((job, ALL_TENANTS))) is not None:
        out(
            f"{job}: still paused for all tenants, so for {tenant} too: {every.describe()} "
            f"(`bgworkers resume {job}` lifts every pause of the job)"
        )
        return 1
    return 0


def describe_job(pauses: Mapping[tuple[str, str], Pause], job: str, limit: int = 3) -> str:
    """One cell for `bgworkers jobs`: '-', 'all tenants', or the paused tenants."""
    if (job, ALL_TENANTS) in pauses:
        return "all tenants"
    tenants = sorted(t for (j, t) in pauses if j == job)
    if not tenants:
        return "-"
    shown = ", ".join(tenants[:limit])
    return f"{shown} +{len(tenants) - limit}" if len(tenants) > limit else shown
