"""A database restart in the middle of ticks: history stays whole and true.

Core, coordination and the tenants live on a throwaway MariaDB of the test's
own, restarted (clean stop, start on the same port) while the daemon runs
heartbeat every second with runs that hold their lease.  Afterwards: no row
is left `running`, every tick of every tenant from the first to the last has
exactly one row, no two runs of a tenant overlap, and runs are `ok` again
after the restart.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import daemon, heartbeat_settings, runs
from helpers import DbUrls, MakeWorld

from bgworkers.demo.harness import MariaDB, events

pytestmark = pytest.mark.mariadb

TENANTS = ["DEFAULT", "maison_atelier", "atelier_3"]


def test_a_database_restart_mid_tick_leaves_a_whole_and_true_history(
    own_mariadb: MariaDB, tmp_path: Path, make_world: MakeWorld
) -> None:
    url = own_mariadb.url
    urls = DbUrls(
        "mariadb",
        f"{url}/bgw_restart_core?charset=utf8mb4",
        f"{url}/bgw_restart_t_{{code_lower}}?charset=utf8mb4",
    )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE DATABASE bgw_restart_core")
    engine.dispose()
    config = heartbeat_settings(tmp_path / "s.toml", urls, every="1s", hold="1500ms")
    make_world(config, TENANTS)
    log = tmp_path / "d.log"
    with daemon(config, log=log) as proc:
        deadline = time.monotonic() + 20
        while sum(r.status == "ok" for r in runs(urls.core_url)) < 2 * len(TENANTS):
            assert time.monotonic() < deadline, "no runs before the restart"
            time.sleep(0.2)
        own_mariadb.stop()  # a clean restart, mid-run
        own_mariadb.start()
        restarted = time.monotonic()
        deadline = restarted + 30
        while not events(log, "history_writes_recovered"):
            assert time.monotonic() < deadline, "deferred history was never written"
            time.sleep(0.2)
        time.sleep(4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    history = runs(urls.core_url)
    assert [r for r in history if r.status == "running"] == []
    by_tenant: dict[str, list[object]] = {t: [] for t in TENANTS}
    for row in history:
        by_tenant[row.tenant].append(row)
    first = min(r.tick_at for r in history)
    last = max(r.tick_at for r in history if r.status != "missed")
    for tenant, rows in by_tenant.items():
        ticks = sorted(r.tick_at for r in rows)  # type: ignore[attr-defined]
        assert len(ticks) == len(set(ticks)), f"{tenant}: a tick has two rows"
        wanted = [first + timedelta(seconds=i) for i in range((last - first).seconds + 1)]
        assert [t for t in wanted if t not in set(ticks)] == [], f"{tenant}: ticks without a row"
        leased = sorted(
            (r.started_at, r.ended_at)
            for r in rows  # type: ignore[attr-defined]
            if r.status not in ("skipped", "missed")
        )  # type: ignore[attr-defined]
        for (_, end), (start, _) in pairwise(leased):
            assert end <= start, f"{tenant}: overlapping runs"
        statuses = {r.status for r in rows}  # type: ignore[attr-defined]
        assert "ok" in statuses
        assert not statuses & {"failed"}, [
            (r.tick_at, r.status, r.error)
            for r in rows  # type: ignore[attr-defined]
            if r.status == "failed"
        ]
    after = [r for r in history if r.status == "ok" and r.tick_at == last]
    assert after, "no run ok after the restart"
    missed = [r for r in history if r.status == "missed" and "core database" in (r.error or "")]
    assert missed, "the ticks during the outage left no row"
