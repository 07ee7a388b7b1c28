"""`bgworkers history`: run history (`bgw_run`) for operators, newest first.

One bounded query: at most `limit` rows (plus one, to tell whether there are
more), newest `started_at` first, through an index whatever the filters
(`(job, started_at)`, `(tenant, started_at)` or `(started_at)`; the primary key
that ends each breaks ties).  Exit status: 0 ok (also when nothing matched),
2 bad usage (argparse: an unknown job, a bad --status, --since or --limit),
3 the history cannot be read, as `status` says UNKNOWN then.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line, limits
from bgworkers.engine.clock import aware_utc, naive_utc
from bgworkers.engine.history import RunStatus
from bgworkers.schema.own import run
from bgworkers.service.status import duration_s, headline, iso

Out = Callable[[str], None]
DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000
#: Limit of the history query: it is indexed, so this is for a database that hangs.
READ_LIMIT = 30.0
EXIT_UNREADABLE = 3
TEXT_ERROR_CHARS, JSON_ERROR_CHARS, COUNTER_CHARS = 100, 500, 48
_AGO = re.compile(r"(\d+)(s|m|h|d|w)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
STATUSES = tuple(s.value for s in RunStatus)


# ------------------------------------------------------------------ argument types


def since_type(now: Callable[[], datetime]) -> Callable[[str], datetime]:
    """--since: an ISO time (naive means UTC) or a duration ago: 90s, 30m, 2h, 1d, 1w,
    or a sum such as 1d12h.  Aware UTC."""

    def parse(text: str) -> datetime:
        value = text.strip()
        if value and _AGO.sub("", value) == "":
            span = sum((int(n) * _UNIT[u] for n, u in _AGO.findall(value)), 0)
            return aware_utc(now()) - timedelta(seconds=span)
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither an ISO time (2026-12-01T08:00, UTC unless an offset is "
                f"given) nor a duration ago (30m, 2h, 1d, 1w)"
            ) from None
        return aware_utc(at)

    return parse


def statuses_type(text: str) -> list[str]:
    """--status: one RunStatus value or several, comma-separated."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in STATUSES]
    if bad or not values:
        raise argparse.ArgumentTypeError(
            f"invalid status {', '.join(map(repr, bad)) or repr(text)}; "
            f"valid: {', '.join(STATUSES)}"
        )
    return values


def limit_type(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LIMIT}, got {value}")
    return value


# ------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Row:
    id: int
    job: str
    tenant: str
    tick_at: datetime
    started_at: datetime
    ended_at: datetime | None
    status: str
    host: str
    pid: int
    run_id: str
    counters: dict[str, Any]
    error: str | None

    @property
    def duration_s(self) -> float | None:
        return duration_s(self.started_at, self.ended_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "tenant": self.tenant,
            "tick_at": iso(self.tick_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_s": self.duration_s,
            "status": self.status,
            "host": self.host,
            "pid": self.pid,
            "run_id": self.run_id,
            "counters": self.counters,
            "error": headline(self.error, JSON_ERROR_CHARS),
        }


def _counters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text[:80]}
    return value if isinstance(value, dict) else {"value": value}


def read(
    engine: Engine,
    *,
    job: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    statuses: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Row], bool]:
    """The newest `limit` runs matching the filters, and whether older ones match too."""
    c = run.c
    query = select(run)
    if job is not None:
        query = query.where(c.job == job)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if since is not None:
        query = query.where(c.started_at >= naive_utc(since))
    if statuses:
        query = query.where(c.status.in_(list(statuses)))
    query = query.order_by(c.started_at.desc(), c.id.desc()).limit(limit + 1)
    with limits.limited(READ_LIMIT), engine.connect() as conn:
        found = conn.execute(query).all()
    rows = [
        Row(
            int(r.id),
            r.job,
            r.tenant,
            aware_utc(r.tick_at),
            aware_utc(r.started_at),
            aware_utc(r.ended_at) if r.ended_at is not None else None,
            r.status,
            r.host,
            int(r.pid),
            r.run_id,
            _counters(r.counters),
            r.error,
        )
        for r in found[:limit]
    ]
    return rows, len(found) > limit


# ------------------------------------------------------------------ output


def _short_counters(counters: dict[str, Any]) -> str:
    """The counters that are not zero, cut to COUNTER_CHARS."""
    text = " ".join(f"{k}={v}" for k, v in counters.items() if v) or "-"
    return text if len(text) <= COUNTER_CHARS else text[: COUNTER_CHARS - 1] + "…"


def _took(row: Row) -> str:
    took = row.duration_s
    return "-" if took is None else f"{took:.1f}s"


def render(rows: list[Row], more: bool, limit: int) -> list[str]:
    if not rows:
        return ["no runs match"]
    header = (
        "TICK (UTC)",
        "STARTED (UTC)",
        "TOOK",
        "OUTCOME",
        "JOB",
        "TENANT",
        "HOST",
        "COUNTERS",
        "ERROR",
    )
    table = [header] + [
        (
            f"{r.tick_at:%Y-%m-%d %H:%M:%S}",
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            _took(r),
            r.status,
            r.job,
            r.tenant,
            r.host,
            _short_counters(r.counters),
            headline(r.error, TEXT_ERROR_CHARS) or "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    if more:
        lines.append(f"(the newest {limit} shown; older runs match too: use --limit or --since)")
    return lines


def show(
    engine: Engine,
    out: Out,
    err: Out,
    *,
    job: str | None,
    tenant: str | None,
    since: datetime | None,
    statuses: Sequence[str] | None,
    limit: int,
    as_json: bool,
    label: str,
) -> int:
    try:
        rows, more = read(
            engine, job=job, tenant=tenant, since=since, statuses=statuses, limit=limit
        )
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        err(f"bgworkers history: cannot read run history from {label}: {error_line(exc)}")
        return EXIT_UNREADABLE
    if as_json:
        out(
            json.dumps(
                {
                    "runs": [r.as_json() for r in rows],
                    "limit": limit,
                    "more": more,
                    "filters": {
                        "job": job,
                        "tenant": tenant,
                        "since": iso(since),
                        "status": list(statuses) if statuses else None,
                    },
                }
            )
        )
    else:
        for line in render(rows, more, limit):
            out(line)
    return 0
