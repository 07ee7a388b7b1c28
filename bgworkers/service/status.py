"""`bgworkers status`: a monitoring check over run history, with Nagios plugin exit codes.

Per enabled job and tenant (served or refused) a state:

- CRITICAL (2): the tenant is refused by discovery, or the latest run that either
  did its work (`ok`) or did not (`history.FAILING`: partial, failed, timed_out,
  abandoned) did not.
- WARNING (1): no success for more than two intervals of the job, or none ever;
  or a run has been `running` for longer than the job's run limit plus the lease
  TTL (a run nobody is finishing).
- OK (0) otherwise.
- PAUSED (counts as OK, 0): the pair is paused (`bgworkers pause`); its reasons
  say by whom, since when and why, then whatever it would be reported for
  otherwise (its paused ticks are `skipped` runs, so it becomes "late").  A
  refused tenant stays CRITICAL even when paused.

`interrupted`, `skipped` and `missed` runs never decide a state by themselves:
the state comes from the latest ok-or-FAILING run, and a job that only skips or
misses becomes WARNING through lateness.  The verdict is the worst state; UNKNOWN
(3) when nothing can be checked: settings unreadable, a database unreachable,
an unknown tenant, a disabled job, nothing to check.

Reads a few indexed queries of run history whatever its size: per status, the
newest id of each (job, tenant) (index (job, tenant, status), which ends with
the primary key), then those rows by primary key; and the pauses (`bgw_pause`,
a row per paused job and tenant).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, union_all
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.engine import pauses
from bgworkers.engine.clock import aware_utc
from bgworkers.engine.history import FAILING, RunStatus
from bgworkers.engine.scheduler import make_trigger, plans
from bgworkers.engine.tenancy import Databases, TenantError, discover, resolve
from bgworkers.schema.own import run
from bgworkers.settings import JobSettings, Settings

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
PAUSED = "PAUSED"  # a pair state only: counts as OK
EXIT_CODES = {OK: 0, PAUSED: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
#: Runs whose outcome decides OK or CRITICAL: they did their work, or did not.
DECISIVE = frozenset({RunStatus.OK, *FAILING})
#: Runs that held the lease and ended: a `running` row older than the newest of
#: these is not running any more (runs of one job and tenant never overlap).
RAN = DECISIVE | {RunStatus.INTERRUPTED}
ENDED = frozenset(s for s in RunStatus if s is not RunStatus.RUNNING)
TEXT_ERROR_CHARS, JSON_ERROR_CHARS = 120, 500
_ID_CHUNK = 500


class CheckError(Exception):
    """Nothing can be checked; str() is one line for the operator (the UNKNOWN reason)."""


@dataclass(frozen=True)
class Run:
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    counters: dict[str, int]
    error: str | None  # the full text recorded in history

    @property
    def duration_s(self) -> float | None:
        return duration_s(self.started_at, self.ended_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_s": self.duration_s,
            "outcome": self.outcome,
            "counters": self.counters,
            "error": headline(self.error, JSON_ERROR_CHARS),
        }


@dataclass
class Pair:
    job: str
    tenant: str
    state: str
    reasons: list[str]
    last_run: Run | None  # the newest ended run, whatever its outcome
    last_success: datetime | None  # end of the newest ok run
    last_failure: Run | None  # the newest FAILING run, even if a success followed
    next_tick: datetime | None
    late_after: timedelta
    stuck: Run | None = None  # a run left `running` beyond its limit plus the lease TTL
    refused: str | None = None  # why discovery refuses the tenant
    paused: pauses.Pause | None = None  # the operator's pause that stops it

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "tenant": self.tenant,
            "state": self.state,
            "reasons": self.reasons,
            "last_run": self.last_run.as_json() if self.last_run else None,
            "last_success": iso(self.last_success),
            "last_failure": self.last_failure.as_json() if self.last_failure else None,
            "next_tick": iso(self.next_tick),
            "late_after_s": self.late_after.total_seconds(),
            "stuck_run": self.stuck.as_json() if self.stuck else None,
            "refused": self.refused,
            "paused": self.paused.as_json() if self.paused else None,
        }


@dataclass
class Check:
    checked_at: datetime
    pairs: list[Pair] = field(default_factory=list)
    error: str | None = None  # why nothing could be checked (UNKNOWN)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return UNKNOWN
        states = (p.state for p in self.pairs if p.state != PAUSED)
        return max(states, key=EXIT_CODES.__getitem__, default=OK)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def counts(self) -> dict[str, int]:
        return {
            state.lower(): sum(p.state == state for p in self.pairs)
            for state in (CRITICAL, WARNING, OK, PAUSED)
        }

    def summary(self) -> str:
        if self.error is not None:
            return f"BGWORKERS UNKNOWN - {self.error.strip().splitlines()[0]}"
        counts = ", ".join(
            f"{n} {state}" for state, n in self.counts().items() if n or state != PAUSED.lower()
        )
        n = len(self.pairs)
        return f"BGWORKERS {self.verdict} - {counts} ({n} job/tenant pair{'s' * (n != 1)})"

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "checked_at": iso(self.checked_at),
            "error": self.error,
            "counts": self.counts(),
            "pairs": [p.as_json() for p in self.pairs],
        }


# ------------------------------------------------------------------ helpers


def duration_s(started_at: datetime, ended_at: datetime | None) -> float | None:
    """Seconds a run took, to the millisecond; None while it has not ended."""
    if ended_at is None:
        return None
    return round((ended_at - started_at).total_seconds(), 3)


def iso(at: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset, to the second: 2025-06-01T10:00:00+00:00."""
    return at.astimezone(UTC).isoformat(timespec="seconds") if at is not None else None


def headline(error: str | None, limit: int) -> str | None:
    """The line that says what went wrong: the first, or a traceback's last; shortened."""
    if not error or not error.strip():
        return None
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    line = lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def age(span: timedelta) -> str:
    """A duration for people: 45s, 10m 5s, 3h 2m, 2d 4h."""
    seconds = max(0, int(span.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def interval(job: JobSettings, settings: Settings, now: datetime) -> timedelta:
    if job.every is not None:
        return job.every
    trigger = make_trigger(job, settings.scheduler, jitter=False)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(microseconds=1))
    gap: timedelta = second - first
    return gap


def database_label(dbs: Databases, raw_url: str) -> str:
    return dbs.url(raw_url).render_as_string(hide_password=True)


# ------------------------------------------------------------------ the check


def check(
    settings: Settings,
    dbs: Databases,
    now: datetime,
    job: str | None = None,
    tenant: str | None = None,
) -> Check:
    """The state of every (enabled job, tenant) pair; raises CheckError when nothing
    can be checked."""
    enabled = list(plans(settings))
    if job is not None:
        if job not in enabled:
            raise CheckError(f"job {job} is disabled in {settings.source}: nothing to check")
        enabled = [job]
    core_url = settings.database.core_url
    try:
        served, refused = discover(settings, dbs.core)
    except SQLAlchemyError as exc:
        raise CheckError(
            f"core database {database_label(dbs, core_url)} unreachable: {error_line(exc)}"
        ) from None
    tenants = [*((t.id, t.code, None) for t in served), *((p.id, p.code, p.error) for p in refused)]
    tenants.sort()
    if tenant is not None:
        tenants = [t for t in tenants if t[1] == tenant]
        if not tenants:
            raise CheckError(_why_not_served(settings, dbs.core, tenant))
    if not tenants or not enabled:
        raise CheckError(
            "nothing to check: "
            + ("no job is enabled" if not enabled else "no active tenant in core organization")
        )
    coordination_url = settings.database.coordination_url or core_url
    try:
        newest, rows = _history(dbs.coordination, job, tenant)
    except SQLAlchemyError as exc:
        which = "coordination" if settings.database.coordination_url else "core"
        raise CheckError(
            f"{which} database {database_label(dbs, coordination_url)} "
            f"unreachable (run history): {error_line(exc)}"
        ) from None
    try:
        paused = pauses.read(dbs.coordination, job)
    except SQLAlchemyError as exc:
        raise CheckError(
            f"pauses (bgw_pause) unreadable, has `bgworkers db upgrade` run? {error_line(exc)}"
        ) from None
    pairs = []
    for name in enabled:
        job_settings = settings.jobs.get(name)
        late_after = 2 * interval(job_settings, settings, now)
        fire = make_trigger(job_settings, settings.scheduler, jitter=False).get_next_fire_time(
            None, now
        )
        stuck_after = job_settings.run_limit + settings.scheduler.lease_ttl
        for _, code, refusal in tenants:
            pairs.append(
                _pair(
                    name,
                    code,
                    refusal,
                    newest.get((name, code), {}),
                    rows,
                    now,
                    late_after,
                    stuck_after,
                    fire.astimezone(UTC) if fire is not None else None,
                    pauses.find(paused, name, code),
                )
            )
    pairs.sort(key=lambda p: -EXIT_CODES[p.state])  # stable: job, then tenant id order
    return Check(now, pairs)


def _why_not_served(settings: Settings, core: Engine, code: str) -> str:
    try:
        resolve(settings, core, code)
    except TenantError as exc:
        return str(exc)
    except SQLAlchemyError as exc:
        return f"tenant {code}: cannot look it up in the core database: {error_line(exc)}"
    return f"tenant {code}: not served with these settings"  # it appeared meanwhile


def _history(
    engine: Engine,
    job: str | None,
    tenant: str | None,
) -> tuple[dict[tuple[str, str], dict[str, int]], dict[int, Run]]:
    """Per (job, tenant), the newest row id of each status; and those rows."""
    c = run.c
    where = [c.job == job] if job is not None else []
    where += [c.tenant == tenant] if tenant is not None else []
    newest_per_status = union_all(
        *(
            select(c.job, c.tenant, c.status, func.max(c.id).label("id"))
            .where(c.status == status.value, *where)
            .group_by(c.job, c.tenant)
            for status in RunStatus
        )
    )
    newest: dict[tuple[str, str], dict[str, int]] = {}
    rows: dict[int, Run] = {}
    with engine.connect() as conn:
        for r in conn.execute(newest_per_status):
            newest.setdefault((r.job, r.tenant), {})[r.status] = int(r.id)
        ids = sorted({i for by_status in newest.values() for i in by_status.values()})
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            for r in conn.execute(
                select(c.id, c.started_at, c.ended_at, c.status, c.counters, c.error).where(
                    c.id.in_(chunk)
                )
            ):
                rows[int(r.id)] = Run(
                    aware_utc(r.started_at),
                    aware_utc(r.ended_at) if r.ended_at is not None else None,
                    r.status,
                    json.loads(r.counters) if r.counters else {},
                    r.error,
                )
    return newest, rows


def _newest(ids: dict[str, int], statuses: Iterable[str]) -> int | None:
    return max((ids[s] for s in statuses if s in ids), default=None)


def _pair(
    job: str,
    tenant: str,
    refusal: str | None,
    ids: dict[str, int],
    rows: dict[int, Run],
    now: datetime,
    late_after: timedelta,
    stuck_after: timedelta,
    next_tick: datetime | None,
    paused: pauses.Pause | None = None,
) -> Pair:
    def row(i: int | None) -> Run | None:
        return rows.get(i) if i is not None else None

    decisive = row(_newest(ids, DECISIVE))
    success = row(ids.get(RunStatus.OK))
    last_failure = row(_newest(ids, FAILING))
    ran_id = _newest(ids, RAN)
    running_id = ids.get(RunStatus.RUNNING)
    running = (
        row(running_id)
        if running_id is not None and (ran_id is None or running_id > ran_id)
        else None
    )
    stuck = running if running is not None and now - running.started_at > stuck_after else None
    success_at = (success.ended_at or success.started_at) if success else None

    critical: list[str] = []
    warning: list[str] = []
    if refusal is not None:
        critical.append(f"tenant refused: {refusal}")
    if decisive is not None and decisive.outcome in FAILING:
        error = headline(decisive.error, TEXT_ERROR_CHARS) or "no error recorded"
        critical.append(
            f"latest run {decisive.outcome} (started "
            f"{decisive.started_at:%Y-%m-%d %H:%M:%S}): {error}"
        )
    if refusal is None:
        if success_at is None:
            warning.append("never ran" if not ids else "no successful run yet")
        elif now - success_at > late_after:
            warning.append(
                f"late: no success for {age(now - success_at)} "
                f"(more than 2 intervals, {age(late_after)})"
            )
    if stuck is not None:
        warning.append(
            f"running since {stuck.started_at:%Y-%m-%d %H:%M:%S} "
            f"({age(now - stuck.started_at)}), beyond its limit and the lease TTL "
            f"({age(stuck_after)}): is anyone still running it?"
        )
    state = CRITICAL if critical else WARNING if warning else OK
    reasons = critical + warning
    if paused is not None and refusal is None:
        state = PAUSED
        reasons = [paused.describe(), *(f"while paused: {r}" for r in reasons)]
    return Pair(
        job,
        tenant,
        state,
        reasons,
        row(_newest(ids, ENDED)),
        success_at,
        last_failure,
        next_tick,
        late_after,
        stuck,
        refusal,
        paused,
    )


# ------------------------------------------------------------------ output


def _when(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if at is not None else "never"


def render_text(result: Check) -> list[str]:
    """The summary line, then a table of the pairs, each problem indented below its row."""
    lines = [result.summary()]
    if result.error is not None:
        lines += result.error.strip().splitlines()[1:]
        return lines
    header = (
        "STATE",
        "JOB",
        "TENANT",
        "LAST RUN (UTC)",
        "TOOK",
        "OUTCOME",
        "LAST SUCCESS (UTC)",
        "NEXT TICK (UTC)",
    )
    rows: list[tuple[Sequence[str], list[str]]] = [(header, [])]
    for p in result.pairs:
        last = p.last_run
        took = last.duration_s if last is not None else None
        rows.append(
            (
                (
                    p.state,
                    p.job,
                    p.tenant,
                    _when(last.started_at if last else None),
                    f"{took:.1f}s" if took is not None else "-",
                    "refused" if p.refused and last is None else last.outcome if last else "-",
                    _when(p.last_success),
                    _when(p.next_tick) if p.next_tick else "-",
                ),
                p.reasons,
            )
        )
    widths = [max(len(r[i]) for r, _ in rows) for i in range(len(header))]
    for cells, reasons in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        lines += [f"    {reason}" for reason in reasons]
    return lines


def emit(result: Check, as_json: bool, out: Callable[[str], None]) -> int:
    if as_json:
        out(json.dumps(result.as_json()))
    else:
        for line in render_text(result):
            out(line)
    return result.exit_code


def report(
    settings: Settings,
    dbs: Databases,
    now: datetime,
    as_json: bool,
    out: Callable[[str], None],
    job: str | None = None,
    tenant: str | None = None,
    err: Callable[[str], None] | None = None,
) -> int:
    """Check, print, and return the exit code; never raises for a failed check.

    An unexpected error is UNKNOWN too (its traceback goes to `err`)."""
    try:
        result = check(settings, dbs, now, job, tenant)
    except CheckError as exc:
        result = Check(now, error=str(exc))
    except Exception as exc:  # a monitoring check must answer UNKNOWN, not crash
        if err is not None:
            err(traceback.format_exc().rstrip())
        result = Check(now, error=f"internal error: {type(exc).__name__}: {exc}")
    return emit(result, as_json, out)
