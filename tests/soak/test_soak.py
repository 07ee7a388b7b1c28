"""Three replicas for about three minutes: the work is spread, a lost replica's tenants
are taken over, and the run history proves both.

Sixty tenants on a MariaDB of the test's own (core, coordination and one database per
tenant).  Three `bgworkers run` replicas fire heartbeat every 5 s; each run holds its
lease 0.4 s and the lease TTL is 6 s.  The timeline:

- all three run a while;
- replica A is killed (SIGKILL) while its runs hold leases;
- later replica B is frozen (SIGSTOP) while its runs hold leases, for longer than the
  TTL, and resumed (SIGCONT) just after a tick fires: it fires that tick late while its
  runs from before the freeze still count as going;
- later the database is restarted (clean stop, start on the same port) under B and C;
- after a while B and C are stopped (SIGTERM) and must exit 0.

Then, from the `bgw_run` history (the logs only where history cannot say):

1. no two runs of a (lease group, tenant) overlap;
2. no tick of a tenant runs twice, in history nor in the logs;
3. every tick of every tenant has a row, and none is left `running`;
4. every tenant whose lease the killed or the frozen replica held is run by another
   replica within TTL + one tick + SLACK;
5. in each phase every live replica ran a fair share of the `ok` runs;
6. outside the database restart, every tick a live replica could run ended `ok`: a
   replica whose previous run is still going, or that fires late, takes no tick away.

The figures are printed (`pytest -s`) and repeated in the failure message.  Not part of
the default run (see pyproject's testpaths): `make soak`, or the last step of `make test`.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import daemon, heartbeat_settings, runs
from helpers import DbUrls, build_world
from sqlalchemy.pool import NullPool

from bgworkers.demo.harness import MariaDB, events
from bgworkers.schema import own

pytestmark = pytest.mark.mariadb

TENANTS = [f"atelier_{i:02d}" for i in range(60)]
REPLICAS = ("A", "B", "C")
EVERY = 5.0  # heartbeat interval, s
TTL = 6.0  # scheduler.lease_ttl, s
HOLD = 0.4  # how long each run holds its lease, s
WORKERS = 16  # scheduler.max_workers of each replica
#: What a takeover may take beyond TTL + one tick: the taken-over tenant's run starts
#: when a worker reaches it in the fan-out of the tick that finds the lease expired.
#: With one replica live (during the freeze), 60 tenants on 16 workers holding 0.4 s
#: each all start within 3 holds (1.2 s); the rest covers the claim, lease and history
#: round trips on a 2-core machine running three daemons and the server.
SLACK = 2.0
PHASE = 25.0  # steady running between two disturbances, s
#: The kill and the database stop land this long after a tick fires, while that tick's
#: runs hold their leases.
MID_RUN = 0.3
#: The freeze lands mid-hold in the second round of a tick's fan-out (the 32 workers of
#: B and C take the first 32 tenants, the others start a hold later), when B's workers
#: hold leases and are between writes.  So B's runs that count as going when it wakes
#: are of tenants late in the order ...
SECOND_ROUND = 2 * HOLD
#: ... and it wakes this long after a tick fires, so that it fires that tick late, before
#: the live replica has reached those tenants in its own fan-out.
LATE = 0.1
#: Where n replicas are live, each runs at least this part of an equal share (1/n) of
#: the ok runs: 15 % each of three, 22.5 % each of two.
FAIR_FLOOR = 0.45
#: Outcomes of a run that held the lease and ran the job.
RAN = {"ok", "partial", "failed", "timed_out", "abandoned", "interrupted"}
#: Log events of a run that ran the job (all carry the run's run_id).  The tick of a run
#: is not in them: it is the tick_at of the history row with that run_id.
RUN_EVENTS = {"job_tenant_result", "run_failed", "run_timed_out", "run_lease_lost"}


def tick_of(at: float) -> float:
    """The scheduled fire time at or before epoch second `at` (ticks count from the epoch)."""
    return math.floor(at / EVERY) * EVERY


def tick_after(at: float) -> float:
    return tick_of(at) + EVERY


def epoch(at: datetime) -> float:
    """A naive UTC time of the database as epoch seconds (server and test share a clock)."""
    return at.replace(tzinfo=UTC).timestamp()


def clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-4]


def sleep_until(at: float) -> None:
    while (left := at - time.time()) > 0:
        time.sleep(min(left, 1.0))


def wait_stopped(pid: int) -> None:
    """Until the kernel reports `pid` stopped (SIGSTOP delivered)."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.01)


def stalled_transactions(url: str) -> list[str]:
    """The transactions open on the server for 0.4 s or more: state, age, rows locked."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT trx_state,"
                    " TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) / 1e6 AS age,"
                    " trx_rows_locked, trx_query FROM information_schema.innodb_trx"
                )
            )
            return [
                f"{row.trx_state} {row.age:.1f} s, {row.trx_rows_locked} rows locked"
                + (f": {' '.join(row.trx_query.split())[:60]}" if row.trx_query else "")
                for row in rows
                if row.age >= 0.4
            ]
    finally:
        engine.dispose()


def valid_leases(url: str, pid: int) -> dict[str, float]:
    """Tenant -> expiry (epoch s) of the unexpired leases that process `pid` holds."""
    engine = sa.create_engine(url, poolclass=NullPool)
    c = own.lease.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.tenant, c.expires_at).where(
                    c.holder.endswith(f":{pid}"), c.expires_at > sa.func.utc_timestamp(6)
                )
            )
            return {row.tenant: epoch(row.expires_at) for row in rows}
    finally:
        engine.dispose()


@dataclass
class Timeline:
    """What the test did, when (epoch seconds), and what the lost replicas held."""

    first: float = 0.0  # first tick checked: the first that all three replicas fire
    kill: float = 0.0  # SIGKILL of A
    freeze: float = 0.0  # SIGSTOP of B
    resume: float = 0.0  # SIGCONT of B
    db_down: float = 0.0  # database stop begins
    db_up: float = 0.0  # database answers again
    term: float = 0.0  # SIGTERM of B and C
    pids: dict[str, int] = field(default_factory=dict)
    held: dict[str, dict[str, float]] = field(default_factory=dict)  # at kill / freeze
    stalled: list[str] = field(default_factory=list)  # transactions left open by the freeze
    exits: dict[str, int] = field(default_factory=dict)  # exit status after the SIGTERM

    @property
    def last(self) -> float:
        """Last tick checked: its runs ended well before the SIGTERM."""
        return tick_of(self.term - SLACK)

    @property
    def restart(self) -> tuple[float, float]:
        """Ticks the restart may disturb: from the one running at the stop to the first
        fired once the server answers and the leases it kept from being released expired
        (after that one the pools have reconnected)."""
        return tick_of(self.db_down), tick_after(max(self.db_up, self.db_down + TTL))

    def in_restart(self, tick: float) -> bool:
        lo, hi = self.restart
        return lo <= tick <= hi

    def lost(self) -> list[tuple[str, float]]:
        """(replica, when) of the replicas that went away while holding leases."""
        return [("A", self.kill), ("B", self.freeze)]

    def phases(self) -> list[tuple[str, tuple[str, ...], float, float]]:
        """(name, live replicas, first tick, last tick) of each steady phase."""
        return [
            ("A, B, C live", REPLICAS, self.first, tick_of(self.kill) - EVERY),
            (
                "B, C after the kill",
                ("B", "C"),
                tick_after(self.kill),
                tick_of(self.freeze) - EVERY,
            ),
            (
                "B, C after the freeze",
                ("B", "C"),
                tick_after(self.resume),
                tick_of(self.db_down) - EVERY,
            ),
            ("B, C after the restart", ("B", "C"), self.restart[1] + EVERY, self.last),
        ]


def run_soak(server: MariaDB, tmp_path: Path) -> tuple[Timeline, str, dict[str, Path]]:
    """Set up, run the timeline; returns it, the coordination URL and the replicas' logs."""
    coordination = f"{server.url}/soak_coordination?charset=utf8mb4"
    urls = DbUrls(
        "mariadb",
        f"{server.url}/soak_core?charset=utf8mb4",
        f"{server.url}/{{code_lower}}?charset=utf8mb4",
    )
    config = heartbeat_settings(
        tmp_path / "soak.toml",
        urls,
        every=f"{EVERY:g}s",
        hold=f"{HOLD * 1000:g}ms",
        max_workers=WORKERS,
        lease_ttl=f"{TTL:g}s",
        extra=f'[database]\ncoordination_url = "{coordination}"\n',
    )
    build_world(config, TENANTS).dbs.dispose()
    logs = {name: tmp_path / f"replica_{name}.log" for name in REPLICAS}
    t = Timeline()
    with ExitStack() as stack:
        procs = {name: stack.enter_context(daemon(config, log=logs[name])) for name in REPLICAS}
        t.pids = {name: proc.pid for name, proc in procs.items()}
        deadline = time.monotonic() + 60
        while not all(events(log, "daemon_started") for log in logs.values()):
            assert time.monotonic() < deadline, "the replicas did not start"
            assert all(p.poll() is None for p in procs.values()), "a replica exited"
            time.sleep(0.2)
        t.first = tick_after(time.time())

        t.kill = tick_after(t.first + PHASE) + MID_RUN
        sleep_until(t.kill)
        procs["A"].send_signal(signal.SIGKILL)
        procs["A"].wait(10)
        t.held["A"] = valid_leases(coordination, t.pids["A"])

        t.freeze = tick_after(t.kill + TTL + EVERY + SLACK + PHASE) + SECOND_ROUND
        sleep_until(t.freeze)
        procs["B"].send_signal(signal.SIGSTOP)
        wait_stopped(t.pids["B"])
        t.held["B"] = valid_leases(coordination, t.pids["B"])
        time.sleep(0.5)
        t.stalled = stalled_transactions(coordination)  # B's, and the writes they block
        t.resume = tick_after(t.freeze + TTL + EVERY) + LATE  # frozen TTL + about 2 ticks
        sleep_until(t.resume)
        procs["B"].send_signal(signal.SIGCONT)

        t.db_down = tick_after(t.resume + PHASE) + MID_RUN
        sleep_until(t.db_down)
        server.stop()
        server.start()
        t.db_up = time.time()

        t.term = t.restart[1] + 3 * EVERY + SLACK  # three ticks after the restart window
        sleep_until(t.term)
        for name in ("B", "C"):
            procs[name].send_signal(signal.SIGTERM)
        t.exits = {name: procs[name].wait(60) for name in ("B", "C")}
    return t, coordination, logs


def test_three_replicas_spread_the_work_and_take_over(own_mariadb: MariaDB, tmp_path: Path) -> None:
    started = time.monotonic()
    t, coordination, logs = run_soak(own_mariadb, tmp_path)
    history = runs(coordination)
    with (tmp_path / "bgw_run.tsv").open("w") as out:  # for a look after a failure
        for row in history:
            print(*row, sep="\t", file=out)
    soak = Soak(history, t, logs)
    soak.check()
    report = "\n".join(
        [f"soak: {time.monotonic() - started:.0f} s, {len(history)} rows", *soak.figures]
    )
    print("\n" + report)
    failed = {name: found for name, found in soak.problems.items() if found}
    if failed:
        pytest.fail(
            "\n".join(
                [
                    f"{name}: {len(found)} violation(s), e.g.\n    " + "\n    ".join(found[:8])
                    for name, found in failed.items()
                ]
                + ["", report]
            ),
            pytrace=False,
        )


# ------------------------------------------------------------------ checks


@dataclass
class Soak:
    """The history of a soak run and what it shows: violations per check, figures."""

    history: list[Any]
    t: Timeline
    logs: dict[str, Path]
    problems: dict[str, list[str]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        t = self.t
        self.names = {pid: name for name, pid in t.pids.items()}
        self.ticks = [t.first + i * EVERY for i in range(round((t.last - t.first) / EVERY) + 1)]
        self.checked = [r for r in self.history if t.first <= epoch(r.tick_at) <= t.last]

    def who(self, row: Any) -> str:
        return self.names.get(row.pid, f"pid {row.pid}")

    def describe(self, row: Any) -> str:
        error = (row.error or "").splitlines()[0][:90] if row.error else ""
        return f"tick {clock(epoch(row.tick_at))} {row.tenant} {row.status} by {self.who(row)}" + (
            f": {error}" if error else ""
        )

    def check(self) -> None:
        t = self.t
        lo, hi = t.restart
        self.figures += [
            f"timeline (UTC): first tick {clock(t.first)}, kill A {clock(t.kill)}, "
            f"freeze B {clock(t.freeze)}, resume B {clock(t.resume)}, database down "
            f"{clock(t.db_down)} up {clock(t.db_up)}, SIGTERM {clock(t.term)}; ticks checked "
            f"{clock(t.first)}..{clock(t.last)} ({len(self.ticks)}), restart window "
            f"{clock(lo)}..{clock(hi)}",
            "rows per status (ticks checked): "
            + ", ".join(
                f"{s} {n}" for s, n in Counter(r.status for r in self.checked).most_common()
            ),
            "transactions open 0.5 s into the freeze (B's, and writes waiting on them): "
            + ("; ".join(t.stalled) or "none"),
        ]
        self.problems["0 exit on SIGTERM"] = [
            f"{name} exited {code}" for name, code in t.exits.items() if code != 0
        ]
        self.no_overlap()
        self.ticks_run_once()
        self.every_tick_has_a_row()
        self.takeovers()
        self.fair_spread()
        self.no_starving()
        self.worst_gap()

    def no_overlap(self) -> None:
        """1. Rows that held the lease: [started_at, ended_at] never overlap per tenant."""
        held = defaultdict(list)
        for row in self.history:
            if row.status in RAN:
                held[row.job, row.tenant].append(row)
        self.problems["1 overlapping runs"] = [
            f"{self.describe(before)} ended {clock(epoch(before.ended_at))}, after "
            f"{self.describe(after)} started {clock(epoch(after.started_at))}"
            for rows in held.values()
            for before, after in pairwise(sorted(rows, key=lambda r: r.started_at))
            if before.ended_at is None or before.ended_at > after.started_at
        ]

    def ticks_run_once(self) -> None:
        """2. One row that ran per (job, tenant, tick), and every run the logs show is that
        row (its run_id, its replica): a second run of a tick whose row names only one
        shows as a run without its row."""
        ran = Counter((r.job, r.tenant, r.tick_at) for r in self.history if r.status in RAN)
        twice = [
            f"{job}/{tenant} tick {clock(epoch(at))}: {n} rows that ran"
            for (job, tenant, at), n in ran.items()
            if n > 1
        ]
        by_run = {r.run_id: r for r in self.history}
        logged: Counter[tuple[str, str, datetime]] = Counter()
        seen: set[str] = set()
        for name, log in self.logs.items():
            for event in events(log):
                run_id = event.get("run_id")
                if event["event"] not in RUN_EVENTS or run_id is None or run_id in seen:
                    continue
                seen.add(run_id)
                row = by_run.get(run_id)
                if row is None:
                    twice.append(
                        f"{name} ran {event['job']}/{event['tenant']} (run {run_id},"
                        f" {event['event']}) with no history row"
                    )
                elif row.pid != self.t.pids[name] or row.status not in RAN:
                    twice.append(f"{name} ran run {run_id} whose row says {self.describe(row)}")
                else:
                    logged[row.job, row.tenant, row.tick_at] += 1
        twice += [
            f"{job}/{tenant} tick {clock(epoch(at))}: run {n} times in the logs"
            for (job, tenant, at), n in logged.items()
            if n > 1
        ]
        self.problems["2 tick run twice"] = twice
        self.figures.append(
            f"runs in the logs: {len(seen)}" + ("" if twice else ", each matched to its own row")
        )

    def every_tick_has_a_row(self) -> None:
        """3. Every tick of every tenant has a row; no row is left running."""
        keys = {(r.tenant, epoch(r.tick_at)) for r in self.history if r.job == "heartbeat"}
        absent = Counter(
            tick for tick in self.ticks for tenant in TENANTS if (tenant, tick) not in keys
        )
        self.problems["3 tick without a row"] = [
            f"tick {clock(tick)}: {n} tenants without a row"
            + (" (restart window)" if self.t.in_restart(tick) else "")
            for tick, n in sorted(absent.items())
        ] + [f"left running: {self.describe(r)}" for r in self.history if r.status == "running"]

    def takeovers(self) -> None:
        """4. The lost replicas' tenants run on another replica within TTL + a tick + SLACK."""
        bound = TTL + EVERY + SLACK
        late: list[str] = []
        for victim, at in self.t.lost():
            held = self.t.held[victim]
            if not held:
                late.append(f"{victim} held no lease when it went away: no takeover tested")
                continue
            delays = {
                tenant: min(
                    (
                        epoch(r.started_at) - at
                        for r in self.history
                        if r.tenant == tenant
                        and r.status == "ok"
                        and r.pid != self.t.pids[victim]
                        and epoch(r.started_at) > at
                    ),
                    default=math.inf,
                )
                for tenant in held
            }
            worst = max(delays, key=lambda tenant: delays[tenant])
            self.figures.append(
                f"takeover of {victim}'s {len(held)} leases (expiring within "
                f"{max(held.values()) - at:.1f} s): worst {delays[worst]:.1f} s ({worst}), "
                f"bound {bound:g} s"
            )
            late += [
                f"{victim}'s {tenant}: run again by another replica {delay:.1f} s after"
                for tenant, delay in sorted(delays.items())
                if delay > bound
            ]
        self.problems["4 late takeover"] = late

    def fair_spread(self) -> None:
        """5. In each phase every live replica ran a fair share of the ok runs."""
        unfair = []
        for phase, live, lo, hi in self.t.phases():
            ok = Counter(
                self.who(r)
                for r in self.history
                if r.status == "ok" and lo <= epoch(r.tick_at) <= hi
            )
            total = sum(ok.values())
            floor = FAIR_FLOOR / len(live)
            self.figures.append(
                f"ok runs, {phase} (ticks {clock(lo)}..{clock(hi)}): {total}: "
                + ", ".join(
                    f"{name} {ok[name]} ({ok[name] / max(total, 1):.0%})"
                    for name in sorted(set(live) | set(ok))
                )
                + f"; floor {floor:.1%} each"
            )
            unfair += [
                f"{phase}: {name} ran {ok[name]} of {total} "
                f"({ok[name] / max(total, 1):.1%} < {floor:.1%})"
                for name in live
                if ok[name] < floor * max(total, 1)
            ]
            if total == 0:
                unfair.append(f"{phase}: no ok runs")
        self.problems["5 unfair spread"] = unfair

    def no_starving(self) -> None:
        """6. Outside the restart window, what live replicas could run ended ok.  Not
        counted: the lost replica's rows of the tick it went away in (runs it had going
        or claimed: the takeover marks them abandoned), and skips while its unexpired
        lease still held the tenant."""
        starved, excused = [], Counter[str]()
        for row in self.checked:
            tick = epoch(row.tick_at)
            if row.status == "ok" or self.t.in_restart(tick):
                continue
            going = any(
                row.pid == self.t.pids[victim] and tick == tick_of(at)
                for victim, at in self.t.lost()
            )
            leased = row.status == "skipped" and any(
                tick_of(at) < tick < self.t.held[victim].get(row.tenant, -math.inf)
                for victim, at in self.t.lost()
            )
            if going or leased:
                why = "the lost replica's own" if going else "lease of the lost replica"
                excused[f"{row.status} ({why})"] += 1
            else:
                starved.append(self.describe(row))
        self.problems["6 tick not run by a live replica"] = starved
        self.figures.append(
            "not ok outside the restart window: "
            + ", ".join([f"{n} {why}" for why, n in excused.items()] + [f"{len(starved)} starved"])
        )
        reasons = Counter(
            f"{r.status}: {(r.error or '').splitlines()[0][:70]}"
            for r in self.checked
            if r.status != "ok" and r.error
        )
        self.figures += [f"  {n:4d} x {why}" for why, n in reasons.most_common(8)]

    def worst_gap(self) -> None:
        """The longest time between two ok runs of a tenant, gaps across the restart
        window left out."""
        lo, hi = self.t.restart
        gaps = []
        for tenant in TENANTS:
            oks = sorted(
                epoch(r.tick_at) for r in self.checked if r.tenant == tenant and r.status == "ok"
            )
            gaps += [(b - a, tenant, a) for a, b in pairwise(oks) if b < lo or a > hi]
        if gaps:
            gap, tenant, since = max(gaps)
            self.figures.append(
                f"worst gap between ok runs outside the restart window: "
                f"{gap:g} s ({tenant} after tick {clock(since)}; "
                f"every {EVERY:g} s)"
            )
