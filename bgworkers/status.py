"""`bgworkers status`: per job and tenant, the last run, the next tick and a verdict.

OK; LATE when no run succeeded for two intervals; FAILING when the last finished
run failed, or when discovery refuses the tenant (never run; its error is shown).
Exit status 0 all OK, 1 some LATE, 2 some FAILING: usable as a monitoring check
as it is. Reads run history only, daemon running or not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bgworkers.jobs import BY_NAME
from bgworkers.scheduler import make_trigger, plans
from bgworkers.schema.own import run
from bgworkers.settings import JobSettings, Settings
from bgworkers.tenancy import Databases, discover

VERDICTS = {"OK": 0, "LATE": 1, "FAILING": 2}


@dataclass
class Line:
    job: str
    tenant: str
    health: str
    last_run: str | None  # start, UTC
    took_s: float | None
    result: str | None
    counters: dict[str, int]
    last_success: str | None
    next_tick: str | None
    error: str | None = None  # why the tenant is refused (it is then FAILING, never run)


def interval(job: JobSettings, settings: Settings, now: datetime) -> timedelta:
    if job.every is not None:
        return job.every
    trigger = make_trigger(job, settings.scheduler, jitter=False)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1))
    gap: timedelta = second - first
    return gap


def collect(settings: Settings, dbs: Databases, now: datetime) -> list[Line]:
    tenants, refused = discover(settings, dbs.core)
    errors = {p.code: p.error for p in refused}
    codes = sorted([*((t.id, t.code) for t in tenants), *((p.id, p.code) for p in refused)])
    c = run.c
    latest = (select(c.job, c.tenant, func.max(c.id).label("id"))
              .where(c.status.in_(("ok", "failed"))).group_by(c.job, c.tenant).subquery())
    successes = (select(c.job, c.tenant, func.max(c.ended_at))
                 .where(c.status == "ok").group_by(c.job, c.tenant))
    with dbs.coordination.connect() as conn:
        last = {(r.job, r.tenant): r for r in conn.execute(
            select(run).join(latest, run.c.id == latest.c.id))}
        ok_at = {(r[0], r[1]): r[2] for r in conn.execute(successes)}
    lines = []
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    for name in plans(settings):
        job = settings.jobs.get(name)
        late_after = 2 * interval(job, settings, now)
        fire = make_trigger(job, settings.scheduler).get_next_fire_time(None, now)
        for _, code in codes:
            row, success = last.get((name, code)), ok_at.get((name, code))
            health = ("FAILING" if code in errors or (row is not None and row.status == "failed")
                      else "LATE" if success is None or naive_now - success > late_after
                      else "OK")
            took = (row.ended_at - row.started_at).total_seconds() if row is not None else None
            lines.append(Line(
                name, code, health,
                f"{row.started_at:%Y-%m-%d %H:%M:%S}" if row is not None else None,
                took, row.status if row is not None else None,
                json.loads(row.counters) if row is not None and row.counters else {},
                f"{success:%Y-%m-%d %H:%M:%S}" if success else None,
                f"{fire:%Y-%m-%d %H:%M:%S}" if fire else None, errors.get(code)))
    return lines


def report(settings: Settings, dbs: Databases, now: datetime, as_json: bool,
           out: Callable[[str], None]) -> int:
    lines = collect(settings, dbs, now)
    worst = max((VERDICTS[line.health] for line in lines), default=0)
    if as_json:
        verdict = next(k for k, v in VERDICTS.items() if v == worst)
        doc: dict[str, Any] = {"checked_at": f"{now:%Y-%m-%d %H:%M:%S}", "health": verdict,
                               "runs": [asdict(line) for line in lines]}
        out(json.dumps(doc))
        return worst
    rows = [("JOB", "TENANT", "HEALTH", "LAST RUN (UTC)", "TOOK", "RESULT", "NEXT TICK (UTC)",
             "COUNTERS")]
    for line in lines:
        counters = " ".join(f"{k}={v}" for k, v in line.counters.items()
                            if v and k in BY_NAME[line.job].counters)
        rows.append((line.job, line.tenant, line.health, line.last_run or "never",
                     f"{line.took_s:.1f}s" if line.took_s is not None else "-",
                     "refused" if line.error else line.result or "-", line.next_tick or "-",
                     counters))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for code, error in dict.fromkeys((x.tenant, x.error) for x in lines if x.error):
        out(f"tenant {code}: REFUSED: {error}")
    return worst
