"""Benchmark: drain 10,000 due outbox rows of one tenant on MariaDB, all linkable.

Prints the drain time, rows/s (held to >= 5,000 rows/s) and the ratio to one
bulk UPDATE writing the same 10,000 links (held to <= 3x), for a batch size
that drains in one run (10,000) and for the default batch size (100, one run
per 100 rows; informative).  The reference held to is B: one UPDATE of the
same registry rows named by their serials, as a link must find them.  A finds
them by tenant instead (possible here only because the tenant has no other
rows): a lower floor, printed for information.  The cases run interleaved,
REPEAT rounds on the same rows, reset (and left to settle) between cases; each
figure is the best round (noise only adds time), the median beside it.

    .venv/bin/python bench/serial_outbox.py [--url mysql+mysqldb://root@127.0.0.1:PORT]
                                            [--rows 10000] [--repeat 15]

Without --url (or BGWORKERS_TEST_MARIADB_URL) a throwaway MariaDB is started
(bgworkers.demo.harness) and removed afterwards.

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bgworkers.demo.harness import mariadb_server
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.logs import get_logger
from bgworkers.engine.tenancy import Databases, Tenant
from bgworkers.jobs import SERIAL_OUTBOX
from bgworkers.jobs.outbox import job as serial_outbox
from bgworkers.schema import core, tenant
from bgworkers.service import dbadmin
from bgworkers.settings import Settings

ROWS = 10_000
REPEAT = 15
SETTLE = 0.1  # seconds after a reset, before the clock starts
OFFSET = 100_000  # the token of a serial is its id_serial + OFFSET
TARGET_RATE, TARGET_RATIO = 5_000, 3.0
NOW = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
ERP_NOW = datetime(2026, 1, 15, 10, 0)
REG, OUT = core.serial_registry, tenant.serial_link_outbox


def setup(server: str) -> tuple[Settings, Databases, list[str]]:
    prefix = f"bgw_bench_{os.getpid()}_"
    query = "?charset=utf8mb4"
    settings = Settings(
        database={
            "core_url": f"{server}/{prefix}core{query}",
            "tenant_url": f"{server}/{prefix}t_{{code_lower}}{query}",
        }
    )
    dbs = Databases(settings)
    assert dbadmin.init(settings, dbs, None, lambda _: None) == 0
    with dbs.core.begin() as conn:
        conn.execute(
            core.organization.insert(),
            [
                {
                    "id_org": 1,
                    "code": "DEFAULT",
                    "name": "Bellavier Atelier",
                    "status": "active",
                    "org_serial_code": "BLVR",
                }
            ],
        )
    assert dbadmin.init(settings, dbs, None, lambda _: None) == 0
    created = ERP_NOW - timedelta(hours=1)
    serials = [f"BLVR-HAT-BAG{n % 100:02d}-20260115-{n:05d}-AB12-X" for n in range(1, ROWS + 1)]
    with dbs.core.begin() as conn:  # token of serial n = id_serial + OFFSET
        conn.execute(
            REG.insert(),
            [
                {
                    "id_serial": n,
                    "serial_code": s,
                    "tenant_id": 1,
                    "org_code": "DEFAULT",
                    "production_type": "hatthasilpa",
                    "created_at": created,
                }
                for n, s in enumerate(serials, 1)
            ],
        )
    with dbs.tenant("DEFAULT").begin() as conn:
        conn.execute(
            OUT.insert(),
            [
                {
                    "serial_code": s,
                    "dag_token_id": n + OFFSET,
                    "created_at": created,
                    "updated_at": created,
                }
                for n, s in enumerate(serials, 1)
            ],
        )
    return settings, dbs, serials


def drop(settings: Settings, dbs: Databases) -> None:
    names = [
        dbs.url(settings.database.core_url).database,
        dbs.url(settings.tenant_url("DEFAULT")).database,
    ]
    dbs.dispose()
    server = sa.create_engine(dbs.url(settings.database.core_url).set(database=""))
    with server.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    server.dispose()


def reset(dbs: Databases) -> None:
    with dbs.core.begin() as conn:
        conn.execute(sa.update(REG).values(dag_token_id=None))
    with dbs.tenant("DEFAULT").begin() as conn:
        conn.execute(sa.update(OUT).values(status="pending", next_attempt_at=None))


def check_links(dbs: Databases) -> None:
    with dbs.core.connect() as conn:
        right = conn.execute(
            sa.select(sa.func.count()).where(REG.c.dag_token_id == REG.c.id_serial + OFFSET)
        ).scalar_one()
    assert right == ROWS, f"{right} of {ROWS} links written"


def bulk_by_tenant(dbs: Databases) -> None:
    """Reference: one UPDATE writing the same links, rows found by tenant (no serial list)."""
    with dbs.core.begin() as conn:
        conn.execute(
            sa.update(REG)
            .where(REG.c.tenant_id == 1, REG.c.dag_token_id.is_(None))
            .values(dag_token_id=REG.c.id_serial + OFFSET)
        )


def bulk_by_serial(dbs: Databases, serials: list[str]) -> None:
    """Reference: one UPDATE writing the same links, rows named by their 10,000 serials."""
    with dbs.core.begin() as conn:
        conn.execute(
            sa.update(REG)
            .where(REG.c.serial_code.in_(serials))
            .values(dag_token_id=REG.c.id_serial + OFFSET)
        )


def drain(settings: Settings, dbs: Databases, batch: int) -> None:
    jobs = settings.jobs.model_copy(
        update={
            "serial_outbox": settings.jobs.serial_outbox.model_copy(update={"batch_size": batch})
        }
    )
    ctx = SERIAL_OUTBOX.context(
        settings.model_copy(update={"jobs": jobs}),
        Tenant(1, "DEFAULT", "Bellavier Atelier", "BLVR"),
        dbs,
        FixedClock(NOW),
        get_logger(),
    )
    done = runs = 0
    while done < ROWS:  # drained when every row is done (no run is spent finding none left)
        result = serial_outbox.run(ctx)
        assert result["succeeded"] == result["pending_found"] > 0, result
        done, runs = done + result["succeeded"], runs + 1
    assert (done, runs) == (ROWS, -(-ROWS // batch)), (done, runs)


def measure(cases: dict[str, Callable[[], None]], dbs: Databases) -> dict[str, list[float]]:
    """Seconds per case and round; the cases of a round run back to back (same load)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(REPEAT):
        for name, action in cases.items():
            reset(dbs)
            time.sleep(SETTLE)
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
            check_links(dbs)
    return times


def main() -> int:
    global ROWS, REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MariaDB server URL without a database")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"due outbox rows ({ROWS})")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"rounds ({REPEAT})")
    args = parser.parse_args()
    ROWS, REPEAT = args.rows, args.repeat
    url = args.url or os.environ.get("BGWORKERS_TEST_MARIADB_URL", "").strip()
    with mariadb_server(url or None) as server:
        settings, dbs, serials = setup(server)
        try:
            times = measure(
                {
                    "tenant": lambda: bulk_by_tenant(dbs),
                    "serial": lambda: bulk_by_serial(dbs, serials),
                    "drain": lambda: drain(settings, dbs, ROWS),
                    "drain100": lambda: drain(settings, dbs, 100),
                },
                dbs,
            )
        finally:
            drop(settings, dbs)
    best = {name: min(values) for name, values in times.items()}
    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"MariaDB, {ROWS} due outbox rows in one tenant, all linkable; best of {REPEAT} "
        "interleaved rounds (median in brackets)"
    )
    for key, label in (
        ("serial", "B, one UPDATE of the registry rows by serial"),
        ("tenant", "A, one UPDATE of the registry rows by tenant"),
    ):
        print(f"  reference {label}: {best[key] * 1000:7.1f} ms ({med[key] * 1000:.1f})")
    missed = False
    for case, batch in (("drain", ROWS), ("drain100", 100)):
        rate, ratio_b, ratio_a = (
            ROWS / best[case],
            best[case] / best["serial"],
            best[case] / best["tenant"],
        )
        held = batch == ROWS
        verdict = (
            ("ok" if rate >= TARGET_RATE and ratio_b <= TARGET_RATIO else "MISSED")
            if held
            else "informative"
        )
        print(
            f"  drain, batch_size {batch:>5}: {best[case] * 1000:7.1f} ms "
            f"({med[case] * 1000:.1f})  {rate:6.0f} rows/s (target >= {TARGET_RATE})  "
            f"ratio to B {ratio_b:4.2f}x (target <= {TARGET_RATIO:g}x), to A {ratio_a:4.2f}x"
            f"  [{verdict}]"
        )
        missed = missed or verdict == "MISSED"
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
