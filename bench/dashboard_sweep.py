"""Fast-tier ticks over many small tenants on MariaDB, through the runner, checking its data.

    .venv/bin/python bench/dashboard_sweep.py [--url mysql+mysqldb://root@127.0.0.1:PORT]
                                              [--tenants 200,1000] [--scale 1]

Fills the largest number of tenants with demo data (kept on a --url server, so a
second run skips it) and stops unless every tenant has tokens.  Then, for each
count N, runs `dashboard_fast` once over the first N tenants with the default
concurrency (scheduler.max_workers = 4), with the server's max_connections at
its default of 151, and prints: the tick time and its ratio to the tier's 60 s
interval (held to <= 0.30), the cost per tenant and its ratio to the smallest
count's (held to <= 1.10), and the server's peak connections during the tick
(held to <= max_workers + 8).  Every tenant must end `ok` with rows written.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from dashboard import server  # noqa: E402

from bgworkers.demo import generate  # noqa: E402
from bgworkers.runner import Runner  # noqa: E402
from bgworkers.schema import tenant as t  # noqa: E402
from bgworkers.settings import Settings, load_settings  # noqa: E402
from bgworkers.tenancy import Databases, discover  # noqa: E402

DEFAULT_MAX_CONNECTIONS = 151  # MariaDB's and MySQL's default


def write_settings(path: Path, url: str, include: list[str]) -> Settings:
    path.write_text(f"""
[database]
core_url = "{url}/bgw_sweep_core?charset=utf8mb4"
tenant_url = "{url}/bgw_sweep_t_{{code_lower}}?charset=utf8mb4"
[tenants]
include = {include!r}
[logging]
level = "warning"
format = "json"
""".replace("'", '"'))
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
            status = generate(settings, dbs, tenants=tenants, scale=scale, seed=1, reset=True,
                              out=lambda _: None)
            if status != 0:
                sys.exit(f"demo-data failed (exit {status}): the benchmark would measure "
                         "empty tenants")
            print(f"demo data for {tenants} tenants: {time.monotonic() - began:.0f} s")
            codes = [x.code for x in discover(settings, dbs.core)[0]]
        empty = []
        for code in codes:
            with dbs.tenant(code).connect() as conn:
                if not conn.execute(sa.select(sa.func.count()).select_from(t.flow_token)
                                    ).scalar_one():
                    empty.append(code)
        if len(codes) != tenants or empty:
            sys.exit(f"data check failed: {len(codes)} tenants, {len(empty)} without tokens "
                     f"(e.g. {empty[:3]})")
        print(f"data check: {len(codes)} tenants, every one with tokens")
        return codes
    finally:
        dbs.dispose()


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
                value = conn.execute(sa.text(
                    "SHOW GLOBAL STATUS LIKE 'Threads_connected'")).one()[1]
                self.peak = max(self.peak, int(value) - 1)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MariaDB server URL without a database (kept afterwards)")
    parser.add_argument("--tenants", default="200",
                        help="tenant counts, comma-separated, e.g. 200,1000 (200)")
    parser.add_argument("--scale", type=float, default=1.0, help="demo-data scale per tenant")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.tenants.split(","))
    with server(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        codes = ensure_data(write_settings(Path(tmp) / "all.toml", url, []), counts[-1],
                            args.scale)
        admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f"SET GLOBAL max_connections = {DEFAULT_MAX_CONNECTIONS}"))
        admin.dispose()
        per_tenant: dict[int, float] = {}
        failed = False
        for n in counts:
            settings = write_settings(Path(tmp) / f"{n}.toml", url, codes[:n])
            runner = Runner(settings)
            runner.leases.start()
            try:
                with PeakConnections(url) as peak:
                    began = time.monotonic()
                    result = runner.tick("dashboard_fast", datetime.now(UTC))
                    tick = time.monotonic() - began
            finally:
                runner.close()
            ok = [c for c, r in result.tenants.items()
                  if r.status == "ok" and r.counters.get("rows_written", 0) > 0]
            per_tenant[n] = tick / n
            workers = settings.scheduler.max_workers
            print(f"{n} tenants: tick {tick:.1f} s, ratio to the 60 s interval "
                  f"{tick / 60:.2f} (held to <= 0.30); {per_tenant[n] * 1000:.1f} ms per tenant "
                  f"(x{per_tenant[n] / per_tenant[counts[0]]:.2f} of {counts[0]} tenants, "
                  f"held to <= 1.10); peak server connections {peak.peak} "
                  f"(held to <= max_workers + 8 = {workers + 8}, max_connections "
                  f"{DEFAULT_MAX_CONNECTIONS}); {len(ok)} of {n} tenants ok with rows")
            if len(ok) != n:
                bad = {c: (r.status, (r.error or "")[:80]) for c, r in result.tenants.items()
                       if c not in ok}
                print(f"  not ok: {dict(list(bad.items())[:5])}")
                failed = True
        if failed:
            sys.exit("some tenants did not refresh: the figures above are not valid")


if __name__ == "__main__":
    main()
