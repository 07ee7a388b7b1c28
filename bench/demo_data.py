"""Benchmark: `demo-data` with 1,000,000 serials for one tenant on MariaDB (target: 120 s).

    .venv/bin/python bench/demo_data.py [--scale 1000] [--keep]

Starts a throwaway MariaDB (bgworkers.demo.harness; stopped and deleted
at the end, also when the benchmark is killed), or uses the server of
BGWORKERS_BENCH_MARIADB_URL (e.g. mysql+mysqldb://root@127.0.0.1:3306; its
benchmark databases are dropped at the end unless --keep).  Prints the rows
written per table, the elapsed time of the whole `generate` call (schema
included) and its ratio to the target, plus the CPU seconds of this process
and of the server, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from bgworkers.demo import PROFILE, generate
from bgworkers.demo.harness import MariaDB, MariaDBError
from bgworkers.engine.tenancy import Databases
from bgworkers.settings import DatabaseSettings, Settings

URL_ENV = "BGWORKERS_BENCH_MARIADB_URL"
TARGET_S = 120.0
AT = datetime(2025, 11, 14, 9, 30)


@contextmanager
def mariadb() -> Iterator[tuple[str, int | None]]:
    """(server URL without database, server pid when we started it)."""
    configured = os.environ.get(URL_ENV, "").strip()
    if configured:
        yield configured.rstrip("/"), None
        return
    server = MariaDB(owner_pid=os.getpid(), prefix="bgw-bench-")
    try:
        url = server.start(timeout=180)
    except MariaDBError as exc:
        sys.exit(f"could not start MariaDB: {exc}")
    try:
        yield url, server.pid
    finally:
        server.remove()


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop(server_url: str, prefix: str) -> None:
    engine = sa.create_engine(server_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for name in conn.execute(sa.text("SHOW DATABASES")).scalars().all():
                if name.startswith(prefix):
                    conn.execute(sa.text(f"DROP DATABASE `{name}`"))
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1000.0)
    parser.add_argument("--keep", action="store_true", help="keep the databases (external server)")
    args = parser.parse_args()
    with mariadb() as (server, pid):
        prefix = f"bgw_bench_{uuid.uuid4().hex[:6]}_"
        db = DatabaseSettings(
            core_url=f"{server}/{prefix}core?charset=utf8mb4",
            tenant_url=f"{server}/{prefix}t_{{code_lower}}?charset=utf8mb4",
        )
        settings = Settings(database=db)
        dbs = Databases(settings)
        lines: list[str] = []
        server_cpu, own_cpu = cpu_seconds(pid), resource.getrusage(resource.RUSAGE_SELF)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        status = generate(
            settings, dbs, tenants=1, scale=args.scale, seed=1, at=AT, out=lines.append
        )
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        server_after = cpu_seconds(pid)
        dbs.dispose()
        if status != 0:
            print("\n".join(lines))
            return status
        rows = next(line for line in lines if " rows: " in line)
        counts = dict(item.split("=") for item in rows.split(" rows: ")[1].split(" (")[0].split())
        width = max(map(len, counts))
        for table, count in counts.items():
            print(f"  {table:<{width}} {int(count):>12,}")
        print(f"  {'total':<{width}} {sum(int(c) for c in counts.values()):>12,}")
        python_cpu = (after.ru_utime - own_cpu.ru_utime) + (after.ru_stime - own_cpu.ru_stime)
        server_note = (
            ""
            if server_cpu is None or server_after is None
            else f", mariadbd {server_after - server_cpu:.1f} s"
        )
        print(
            f"  cpu: python {python_cpu:.1f} s{server_note}; {os.cpu_count()} cpus, "
            f"load average {load:.2f} at start"
        )
        serials = round(PROFILE.serials * args.scale)  # + a few orphaned rows planted
        print(
            f"demo-data {serials:,} serials: {elapsed:.1f} s "
            f"(target {TARGET_S:.0f} s, ratio {elapsed / TARGET_S:.2f})"
        )
        if pid is None and not args.keep:
            drop(server, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
