"""`bgworkers quarantine list|resolve`: the serials the serial check quarantined, per tenant.

`list` reads only: per tenant (every active one, or the one named, as
`tenancy.resolve` finds it) the open rows (`resolved_at IS NULL`), or all rows
with `include_resolved`, newest first, at most `limit` per tenant with the count
of the rest.  `resolve` is the only write: it sets `resolved_at` (naive UTC, as
the serial tables store their times) on the named rows that are still open; the
UPDATE is guarded by `resolved_at IS NULL`, so a row resolved meanwhile keeps its
time.  The serial check opens a new row if the problem is still there.

Exit status: 0 ok; 1 some of it could not be done (a tenant unreadable or
refused, an id missing or already resolved: each named); 2 bad usage (a tenant
`tenancy.resolve` refuses).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line, limits
from bgworkers.engine.clock import Clock, SystemClock, aware_utc, naive_utc
from bgworkers.engine.tenancy import Databases, TenantError, TenantProblem, discover, resolve
from bgworkers.jobs.outbox.sql import write_transaction
from bgworkers.schema.tenant import serial_quarantine as quarantine
from bgworkers.settings import Settings

Out = Callable[[str], None]
DEFAULT_LIMIT = 100
#: Limit of each tenant's statements (a hung tenant database does not hang the command).
STATEMENT_LIMIT = 30.0
REASONS: tuple[str, ...] = tuple(quarantine.c.reason.type.enums)  # type: ignore[attr-defined]
SERIAL_CHARS = 64


@dataclass(frozen=True)
class Row:
    id: int
    serial_code: str
    reason: str
    source_table: str
    source_id: int | None
    detected_at: datetime | None  # naive UTC
    resolved_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "serial_code": self.serial_code,
            "reason": self.reason,
            "source_table": self.source_table,
            "source_id": self.source_id,
            "detected_at": _iso(self.detected_at),
            "resolved_at": _iso(self.resolved_at),
        }


def _iso(at: datetime | None) -> str | None:
    return aware_utc(at).isoformat(timespec="seconds") if at is not None else None


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else "-"


def _shown(serial: str) -> str:
    """A serial as it can be printed: escaped (control characters, bad bytes), cut."""
    text = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in serial
    )
    return text if len(text) <= SERIAL_CHARS else text[: SERIAL_CHARS - 1] + "…"


def _tenants(
    settings: Settings, dbs: Databases, code: str | None, out: Out
) -> tuple[list[str], list[TenantProblem]] | int:
    """The tenant codes to read, and those refused; an exit status when there are none."""
    try:
        with limits.limited(STATEMENT_LIMIT):
            if code is not None:
                return [resolve(settings, dbs.core, code).code], []
            tenants, refused = discover(settings, dbs.core)
    except TenantError as exc:
        out(str(exc))
        return 2
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        out(f"core: FAILED: {error_line(exc)}")
        return 1
    return [t.code for t in tenants], refused


def read(
    engine: Engine,
    *,
    reason: str | None = None,
    include_resolved: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Row], int]:
    """The newest `limit` matching rows of one tenant, and how many match in all."""
    q = quarantine.c
    where: list[ColumnElement[bool]] = [] if include_resolved else [q.resolved_at.is_(None)]
    if reason is not None:
        where.append(q.reason == reason)
    with limits.limited(STATEMENT_LIMIT), engine.connect() as conn:
        total = int(
            conn.execute(select(func.count()).select_from(quarantine).where(*where)).scalar_one()
        )
        found = conn.execute(
            select(
                q.id,
                q.serial_code,
                q.reason,
                q.source_table,
                q.source_id,
                q.detected_at,
                q.resolved_at,
            )
            .where(*where)
            .order_by(q.id.desc())
            .limit(limit)
        ).all()
    rows = [
        Row(
            int(r.id),
            str(r.serial_code),
            str(r.reason),
            str(r.source_table),
            int(r.source_id) if r.source_id is not None else None,
            r.detected_at,
            r.resolved_at,
        )
        for r in found
    ]
    return rows, total


def list_rows(
    settings: Settings,
    dbs: Databases,
    tenant_code: str | None,
    reason: str | None,
    include_resolved: bool,
    as_json: bool,
    out: Out,
    limit: int = DEFAULT_LIMIT,
) -> int:
    named = _tenants(settings, dbs, tenant_code, out)
    if isinstance(named, int):
        return named
    codes, refused = named
    status = 0
    doc: dict[str, Any] = {
        "tenants": {},
        "refused": {},
        "failed": {},
        "open_only": not include_resolved,
        "reason": reason,
        "limit": limit,
    }
    for problem in refused:  # their quarantine is not being looked after
        status = 1
        doc["refused"][problem.code] = problem.error
        if not as_json:
            out(f"tenant {problem.code}: {problem.error}")
    which = "" if include_resolved else "open "
    for code in codes:
        try:
            rows, total = read(
                dbs.tenant(code), reason=reason, include_resolved=include_resolved, limit=limit
            )
        except (SQLAlchemyError, limits.RunTimedOut) as exc:
            status = 1
            doc["failed"][code] = error_line(exc)
            if not as_json:
                out(f"tenant {code}: FAILED: {error_line(exc)}")
            continue
        if as_json:
            doc["tenants"][code] = {"total": total, "rows": [r.as_json() for r in rows]}
            continue
        more = f" (the newest {len(rows)} shown)" if total > len(rows) else ""
        out(
            f"tenant {code}: {total} {which}row{'s' * (total != 1)}"
            f"{f' with reason {reason}' if reason else ''}{more}"
        )
        if rows:
            for line in _table(rows, include_resolved):
                out(f"  {line}")
    if as_json:
        out(json.dumps(doc))
    return status


def _table(rows: Sequence[Row], include_resolved: bool) -> list[str]:
    header = (
        "ID",
        "SERIAL",
        "REASON",
        "SOURCE",
        "DETECTED (UTC)",
        *(("RESOLVED (UTC)",) if include_resolved else ()),
    )
    table = [header] + [
        (
            str(r.id),
            _shown(r.serial_code),
            r.reason,
            f"{r.source_table}#{r.source_id if r.source_id is not None else '-'}",
            _when(r.detected_at),
            *((_when(r.resolved_at),) if include_resolved else ()),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]


def resolve_rows(
    settings: Settings,
    dbs: Databases,
    tenant_code: str,
    ids: Sequence[int],
    out: Out,
    clock: Clock | None = None,
) -> int:
    """Set resolved_at on the named open rows; name those already resolved or missing."""
    named = _tenants(settings, dbs, tenant_code, out)
    if isinstance(named, int):
        return named
    code = named[0][0]
    now = naive_utc((clock or SystemClock()).now()).replace(microsecond=0)
    wanted = sorted(set(ids))
    try:
        with limits.limited(STATEMENT_LIMIT), write_transaction(dbs.tenant(code)) as conn:
            done, already, missing = _resolve(conn, wanted, now)
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        out(f"tenant {code}: FAILED: {error_line(exc)}")
        return 1
    if done:
        out(f"tenant {code}: resolved {len(done)} row(s): ids {', '.join(map(str, done))}")
    for i, at in already:
        out(f"tenant {code}: id {i}: already resolved at {_when(at)} UTC (left alone)")
    for i in missing:
        out(f"tenant {code}: id {i}: no such quarantine row")
    if not done and not already and not missing:
        out(f"tenant {code}: nothing to resolve")
    return 1 if already or missing else 0


def _resolve(
    conn: Connection,
    ids: list[int],
    now: datetime,
) -> tuple[list[int], list[tuple[int, datetime | None]], list[int]]:
    """(resolved now, already resolved with their time, missing)."""
    q = quarantine.c
    found = {
        int(r.id): r.resolved_at
        for r in conn.execute(select(q.id, q.resolved_at).where(q.id.in_(ids)).with_for_update())
    }
    open_ids = [i for i in ids if i in found and found[i] is None]
    done: list[int] = []
    if open_ids:
        conn.execute(
            update(quarantine)
            .where(q.id.in_(open_ids), q.resolved_at.is_(None))
            .values(resolved_at=now)
        )
        # the guard may have left a row resolved meanwhile: read back what is ours
        after = {
            int(r.id): r.resolved_at
            for r in conn.execute(select(q.id, q.resolved_at).where(q.id.in_(open_ids)))
        }
        done = [i for i in open_ids if after.get(i) == now]
        for i in open_ids:
            if i not in done:
                found[i] = after.get(i)
    already = [(i, found[i]) for i in ids if i in found and i not in done]
    missing = [i for i in ids if i not in found]
    return done, already, missing
