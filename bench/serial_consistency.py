"""Benchmark of the serial consistency job on MariaDB: time and memory as data grows.

    .venv/bin/python bench/serial_consistency.py [--server-url URL] [--sizes 250000,1000000]

For each size, one tenant of demo data (`bgworkers.demo.generate`, anomalies at
0.1 %: N job-ticket serials, about N tokens and N registry rows) is generated in
MariaDB; then, each in a fresh subprocess so that its peak RSS is its own:

- `read`: the key columns the job uses, read once in keyset pages of
  `chunk_size` (flow_token, job_ticket_serial, and the tenant's serial_registry
  rows), doing nothing with them (run twice, the first run warms the cache);
- `check`: the full live check (`serial_consistency.run`, salts configured,
  fixes and quarantine written).

Printed: both times at the largest size and their ratio (held to <= 2.0, and the
check to <= 20 s), the peak RSS of the check at the largest and smallest sizes
and their ratio (held to <= 1.25).  Without --server-url a throwaway server is
started (bgworkers.demo.harness) and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

AT = datetime(2025, 11, 20, 12, 0)  # demo anchor (naive UTC), also the job's clock
CODE = "DEFAULT"
LIMITS = {"ratio": 2.0, "seconds": 20.0, "rss_ratio": 1.25}


def main() -> int:
    from bgworkers.demo.harness import MariaDBError, mariadb_server  # not in the measured children

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", help="mysql+mysqldb://root@host:port (no database)")
    parser.add_argument("--sizes", default="250000,1000000", help="serials per run, ascending")
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="token_event rows of the demo tenant (not read by the job)",
    )
    parser.add_argument(
        "--all-live",
        action="store_true",
        help="worst case: make every completed token live before measuring",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bgw-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        try:
            with mariadb_server(args.server_url) as server:
                results = {n: _measure(server, base, n, args.events, args.all_live) for n in sizes}
        except MariaDBError as exc:
            sys.exit(f"could not start MariaDB: {exc}")
    _report(results)
    return 0


def _measure(server: str, base: Path, serials: int, events: int, all_live: bool) -> dict[str, Any]:
    config = base / "settings.toml"
    config.write_text(
        f"[database]\ncore_url = '{server}/bgwbench_core?charset=utf8mb4'\n"
        f"tenant_url = '{server}/bgwbench_t_{{code_lower}}?charset=utf8mb4'\n"
        "[logging]\nformat = 'json'\nlevel = 'warning'\n"
    )
    print(f"== {serials:,} serials: generating demo data ...", flush=True)
    started = time.perf_counter()
    _child("generate", config, str(serials), str(events))
    print(f"   generated in {time.perf_counter() - started:.0f} s", flush=True)
    if all_live:
        _child("all_live", config)
    _child("read", config)  # warm the buffer pool
    read = _child("read", config)
    check = _child("check", config)
    print(
        f"   read {read['seconds']:.2f} s ({read['rows']:,} rows), check "
        f"{check['seconds']:.2f} s, check peak RSS {check['rss_mb']:.1f} MB",
        flush=True,
    )
    print(f"   read per table: {json.dumps(read['tables'])}", flush=True)
    print(f"   the check brought to Python: {check['scope']}", flush=True)
    print(f"   counters {json.dumps(check['counters'])}", flush=True)
    return {"read": read, "check": check}


def _child(*argv: str | Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"child {argv[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _report(results: dict[int, dict[str, Any]]) -> None:
    small, large = min(results), max(results)
    read, check = results[large]["read"]["seconds"], results[large]["check"]["seconds"]
    rss_small = results[small]["check"]["rss_mb"]
    rss_large = results[large]["check"]["rss_mb"]
    print()
    print(
        f"full live check at {large:,} serials: {check:.2f} s "
        f"(held to <= {LIMITS['seconds']:.0f} s)"
    )
    print(f"reading the same key columns once:  {read:.2f} s")
    print(f"ratio check / read: {check / read:.2f} (held to <= {LIMITS['ratio']})")
    print(
        f"peak RSS of the check: {rss_large:.1f} MB at {large:,} serials, "
        f"{rss_small:.1f} MB at {small:,}"
    )
    print(
        f"ratio RSS {large:,} / {small:,}: {rss_large / rss_small:.2f} "
        f"(held to <= {LIMITS['rss_ratio']})"
    )


# ---------------------------------------------------------------- children


def _child_main(action: str, config: str, *rest: str) -> None:
    from bgworkers.engine.logs import configure_logging
    from bgworkers.engine.tenancy import Databases
    from bgworkers.settings import load_settings

    settings = load_settings(Path(config))
    configure_logging(settings.logging, settings.secret_values())
    dbs = Databases(settings)
    try:
        actions: dict[str, Callable[..., dict[str, Any]]] = {
            "generate": _generate,
            "read": _read,
            "check": _check,
            "all_live": _all_live,
        }
        result = actions[action](settings, dbs, *rest)
    finally:
        dbs.dispose()
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _generate(settings: Any, dbs: Any, serials: str, events: str) -> dict[str, Any]:
    from bgworkers.demo.catalog import PROFILE
    from bgworkers.demo.main import generate

    profile = replace(PROFILE, events=int(events))
    lines: list[str] = []
    status = generate(
        settings,
        dbs,
        tenants=1,
        scale=int(serials) / PROFILE.serials,
        seed=1,
        at=AT,
        reset=True,
        out=lines.append,
        profile=profile,
    )
    if status != 0:
        raise SystemExit("\n".join(lines))
    return {"lines": lines}


def _all_live(settings: Any, dbs: Any) -> dict[str, Any]:
    from sqlalchemy import update

    from bgworkers.schema import tenant

    ft = tenant.flow_token
    with dbs.tenant(CODE).begin() as conn:
        rows = conn.execute(
            update(ft).where(ft.c.status == "completed").values(status="active")
        ).rowcount
    return {"made_live": rows}


def _read(settings: Any, dbs: Any) -> dict[str, Any]:
    """The key columns of the check, each table read once in keyset pages."""
    from sqlalchemy import select

    from bgworkers.schema import core, tenant

    size = settings.jobs.serial_consistency.chunk_size
    ft, jts, reg = tenant.flow_token, tenant.job_ticket_serial, core.serial_registry
    # Registry rows in primary-key order (the demo core holds this one tenant): a
    # tenant_id filter would make MariaDB sort the tenant's rows again for every page.
    plans = [
        (
            "flow_token",
            dbs.tenant(CODE),
            ft.c.id_token,
            select(ft.c.id_token, ft.c.token_type, ft.c.status, ft.c.serial_number),
        ),
        (
            "job_ticket_serial",
            dbs.tenant(CODE),
            jts.c.id_serial,
            select(
                jts.c.id_serial,
                jts.c.id_job_ticket,
                jts.c.serial_number,
                jts.c.generated_at,
                jts.c.spawned_token_id,
            ),
        ),
        (
            "serial_registry",
            dbs.core,
            reg.c.id_serial,
            select(
                reg.c.id_serial,
                reg.c.serial_code,
                reg.c.tenant_id,
                reg.c.production_type,
                reg.c.dag_token_id,
                reg.c.hash_signature,
                reg.c.hash_salt_version,
            ),
        ),
    ]
    started, rows, tables = time.perf_counter(), 0, {}
    for name, engine, key, stmt in plans:
        last, begun, count = -1, time.perf_counter(), 0
        while True:
            with engine.connect() as conn:
                page = conn.execute(stmt.where(key > last).order_by(key).limit(size)).all()
            count += len(page)
            if len(page) < size:
                break
            last = page[-1][0]
        rows += count
        tables[name] = f"{count:,} rows in {time.perf_counter() - begun:.2f} s"
    return {"seconds": time.perf_counter() - started, "rows": rows, "tables": tables}


def _check(settings: Any, dbs: Any) -> dict[str, Any]:
    from bgworkers.demo.harness import make_context
    from bgworkers.jobs.serials import consistency as serial_consistency

    ctx = make_context(settings, dbs, CODE, AT.replace(tzinfo=UTC), "serial_consistency")
    scope = _check_scope(ctx)
    started = time.perf_counter()
    counters = serial_consistency.run(ctx)
    return {"seconds": time.perf_counter() - started, "counters": counters, "scope": scope}


def _check_scope(ctx: Any) -> str:
    """How many rows the check's two passes bring to Python (the SQL filters the rest)."""
    from sqlalchemy import func, select

    from bgworkers.schema import tenant

    ft, jts = tenant.flow_token, tenant.job_ticket_serial
    with ctx.db.connect() as conn:
        live = conn.execute(
            select(func.count()).where(
                ft.c.status.in_(ctx.settings.erp.live_token_statuses),
                ft.c.serial_number.is_not(None),
            )
        ).scalar_one()
        unlinked = conn.execute(
            select(func.count()).where(jts.c.spawned_token_id.is_(None))
        ).scalar_one()
    return f"{live:,} live tokens with a serial, {unlinked:,} unlinked job-ticket serials"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import os

        from bgworkers.demo.catalog import DEMO_SALT_VERSION, DEMO_SALTS

        os.environ["BGWORKERS_JOBS__SERIAL_CONSISTENCY__SALTS"] = json.dumps(
            {f"{ptype}:{DEMO_SALT_VERSION}": salt for ptype, salt in DEMO_SALTS.items()}
        )
        _child_main(*sys.argv[2:])
    else:
        sys.exit(main())
