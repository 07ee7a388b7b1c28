"""One fast-tier tick over 200 small tenants on MariaDB, through the runner.

    .venv/bin/python bench/dashboard_sweep.py [--url mysql+mysqldb://root@127.0.0.1:PORT]
                                              [--tenants 200]

Fills 200 tenants with demo data at scale 1 (kept on a --url server, so a second
run skips it), then runs `dashboard_fast` once for all of them with the default
concurrency (scheduler.max_workers = 4) and prints the sweep time against the
tier's 60 s interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from dashboard import server  # noqa: E402

from bgworkers.demo import generate  # noqa: E402
from bgworkers.runner import Runner  # noqa: E402
from bgworkers.settings import load_settings  # noqa: E402
from bgworkers.tenancy import Databases, discover  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MariaDB server URL without a database (kept afterwards)")
    parser.add_argument("--tenants", type=int, default=200)
    args = parser.parse_args()
    with server(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "settings.toml"
        config.write_text(f"""
[database]
core_url = "{url}/bgw_sweep_core?charset=utf8mb4"
tenant_url = "{url}/bgw_sweep_t_{{code_lower}}?charset=utf8mb4"
[logging]
level = "warning"
format = "json"
""")
        settings = load_settings(config)
        dbs = Databases(settings)
        try:
            have = len(discover(settings, dbs.core)[0])
        except Exception:
            have = 0
        if have != args.tenants:
            began = time.monotonic()
            generate(settings, dbs, tenants=args.tenants, scale=1, seed=1, reset=True,
                     out=lambda _: None)
            print(f"demo data for {args.tenants} tenants: {time.monotonic() - began:.0f} s")
        dbs.dispose()
        runner = Runner(settings)
        runner.leases.start()
        try:
            began = time.monotonic()
            result = runner.tick("dashboard_fast", datetime.now(UTC))
            sweep = time.monotonic() - began
        finally:
            runner.close()
        ok = sum(r.status == "ok" for r in result.tenants.values())
        rows = sum(r.counters.get("rows_written", 0) for r in result.tenants.values())
        print(f"dashboard_fast over {len(result.tenants)} tenants ({ok} ok, {rows} rows) with "
              f"max_workers={settings.scheduler.max_workers}: {sweep:.1f} s "
              f"(interval 60 s, ratio {sweep / 60:.2f})")


if __name__ == "__main__":
    main()
