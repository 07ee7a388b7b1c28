"""Fast-tier ticks over many small tenants on MariaDB, through the runner, checking its data.

    .venv/bin/python bench/dashboard_sweep.py [--url mysql+mysqldb://root@127.0.0.1:PORT]
                                              [--tenants 200,1000] [--scale 1]
                                              [--repeat 3]

Fills the largest number of tenants with demo data (kept on a --url server, so a
second run skips it, after `db upgrade` of the core database) and stops unless
every tenant has tokens.  Then, REPEAT rounds interleaved over the counts (a
load that comes and goes hits every count; each figure is the best round, as
noise only adds time), runs for each count N two `dashboard_fast` ticks over
the first N tenants as a daemon does after its start: default concurrency
(scheduler.max_workers = 4), logging at info as JSON to a file, the server's
max_connections at its default of 151.  Prints the second tick's time (every
tick but the first after a start is like it) and its ratio to the tier's 60 s
interval (held to <= 0.30; the first tick's beside it), the cost per tenant
and its ratio to the smallest count's (held to <= 1.10), and the server's peak
connections during the ticks (held to <= max_workers + 8).  Every tenant must
end `ok` with rows written in every tick; the exit status is 1 when a bound is
not held.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from bgworkers.demo import generate
from bgworkers.demo.harness import mariadb_server
from bgworkers.engine.logs import configure_logging
from bgworkers.engine.runner import Runner, TickResult
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.jobs import BY_NAME
from bgworkers.schema import tenant as t
from bgworkers.service import dbadmin
from bgworkers.settings import Settings, load_settings

DEFAULT_MAX_CONNECTIONS = 151  # MariaDB's and MySQL's default


def write_settings(path: Path, url: str, include: list[str]) -> Settings:
    path.write_text(
        f"""
[database]
core_url = "{url}/bgw_sweep_core?charset=utf8mb4"
tenant_url = "{url}/bgw_sweep_t_{{code_lower}}?charset=utf8mb4"
[tenants]
include = {include!r}
[logging]
level = "info"
format = "json"
""".replace("'", '"')
    )
    return load_settings(path)


def ensure_data(settings: Settings, tenants: int, scale: float) -> list[str]:
    """Tenant codes, every one with tokens; generated when missing."""
    dbs = Databases(settings)
    try:
        try:
            codes = [x.code for x in discover(settings, dbs.core)[0]]
        except sa.exc.SQLAlchemyError:
            codes = []
        if len(codes) != tenants:
            began = time.monotonic()
            status = generate(
                settings, dbs, tenants=tenants, scale=scale, seed=1, reset=True, out=lambda _: None
            )
            if status != 0:
                sys.exit(
                    f"demo-data failed (exit {status}): the benchmark would measure empty tenants"
                )
            print(f"demo data for {tenants} tenants: {time.monotonic() - began:.0f} s")
            codes = [x.code for x in discover(settings, dbs.core)[0]]
        empty = []
        for code in codes:
            with dbs.tenant(code).connect() as conn:
                if not conn.execute(
                    sa.select(sa.func.count()).select_from(t.flow_token)
                ).scalar_one():
                    empty.append(code)
        if len(codes) != tenants or empty:
            sys.exit(
                f"data check failed: {len(codes)} tenants, {len(empty)} without tokens "
                f"(e.g. {empty[:3]})"
            )
        print(f"data check: {len(codes)} tenants, every one with tokens")
        # kept data may predate a schema change (e.g. an index on the run history)
        if dbadmin.upgrade(settings, dbs, codes[0], False, lambda _: None):
            sys.exit("db upgrade failed")
        return codes
    finally:
        dbs.dispose()


def all_ok(result: TickResult, n: int) -> bool:
    """Every one of the n tenants ended `ok` with rows written (else prints some that did not)."""
    bad = {
        c: (r.status, (r.error or "")[:80])
        for c, r in result.tenants.items()
        if r.status != "ok" or r.counters.get("rows_written", 0) == 0
    }
    if bad or len(result.tenants) != n:
        print(f"  {len(result.tenants)} tenants in the tick; not ok: {dict(list(bad.items())[:5])}")
    return not bad and len(result.tenants) == n


class PeakConnections:
    """Samples the server's Threads_connected while a tick runs (its own one excluded)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.02):
                value = conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Threads_connected'")).one()[
                    1
                ]
                self.peak = max(self.peak, int(value) - 1)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def measure(settings: Settings, url: str, n: int) -> tuple[list[float], int, list[str]]:
    """Two ticks of a fresh runner, as a daemon does after its start: their times, the
    server's peak connections, and what went wrong."""
    runner = Runner(settings, BY_NAME)
    runner.leases.start()
    ticks, failed = [], []
    try:
        with PeakConnections(url) as peak:
            for _ in range(2):  # the first after start, then one like every later one
                began = time.monotonic()
                result = runner.tick("dashboard_fast", datetime.now(UTC))
                ticks.append(time.monotonic() - began)
                if not all_ok(result, n):
                    failed.append(f"{n} tenants: some did not refresh")
    finally:
        runner.close()
    return ticks, peak.peak, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MariaDB server URL without a database (kept afterwards)")
    parser.add_argument(
        "--tenants", default="200", help="tenant counts, comma-separated, e.g. 200,1000 (200)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="demo-data scale per tenant")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the counts (3)")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.tenants.split(","))
    with (
        mariadb_server(args.url) as url,
        tempfile.TemporaryDirectory() as tmp,
        open(Path(tmp) / "daemon.log", "w") as log,
    ):
        all_tenants = write_settings(Path(tmp) / "all.toml", url, [])
        # logged as the daemon logs (info, JSON): its cost is part of a tick's
        configure_logging(all_tenants.logging, stream=log)
        codes = ensure_data(all_tenants, counts[-1], args.scale)
        admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f"SET GLOBAL max_connections = {DEFAULT_MAX_CONNECTIONS}"))
        admin.dispose()
        settings = {n: write_settings(Path(tmp) / f"{n}.toml", url, codes[:n]) for n in counts}
        first: dict[int, float] = {}
        steady: dict[int, float] = {}
        peaks: dict[int, int] = {}
        failed = []
        for _ in range(args.repeat):  # interleaved: a load that comes and goes hits all counts
            for n in counts:
                (cold, tick), peak, wrong = measure(settings[n], url, n)
                first[n], steady[n] = min(first.get(n, cold), cold), min(steady.get(n, tick), tick)
                peaks[n] = max(peaks.get(n, 0), peak)
                failed += wrong
        for n in counts:
            tick, per_tenant = steady[n], steady[n] / n
            growth = per_tenant / (steady[counts[0]] / counts[0])
            bound = settings[n].scheduler.max_workers + 8
            print(
                f"{n} tenants: tick {tick:.1f} s, ratio to the 60 s interval {tick / 60:.2f} "
                f"(held to <= 0.30; the first tick after start: {first[n]:.1f} s, "
                f"{first[n] / 60:.2f}); {per_tenant * 1000:.1f} ms per tenant (x{growth:.2f} "
                f"of {counts[0]} tenants, held to <= 1.10); peak server connections "
                f"{peaks[n]} (held to <= max_workers + 8 = {bound}, max_connections "
                f"{DEFAULT_MAX_CONNECTIONS})"
            )
            failed += [
                f"{n} tenants: {what}"
                for what, past in (
                    ("tick ratio", tick / 60 > 0.30),
                    ("cost per tenant", growth > 1.10),
                    ("peak connections", peaks[n] > bound),
                )
                if past
            ]
        print(
            f"best of {args.repeat} rounds; every tick of every round: every tenant ok with rows"
            if not failed
            else ""
        )
        if failed:
            sys.exit(f"not held: {'; '.join(dict.fromkeys(failed))}")


if __name__ == "__main__":
    main()
