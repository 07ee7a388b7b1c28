"""The daemon with one tenant's database stuck: frozen (SIGSTOP) or table-locked.

One tenant lives on a second throwaway MariaDB, reached through [tenants.urls].
While the daemon runs `dashboard_fast` every 5 s with a 2 s limit, that server
is frozen (or a table of it locked) for 12 s.  From the run history: the other
tenants ran every tick on time; the stuck tenant's runs ended `timed_out`
("timed out after 2 s in: <statement>") before the server came back; it runs `ok` again
afterwards; no row is left `running`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import daemon, runs
from helpers import DbUrls, MakeWorld, write_settings
from sqlalchemy.pool import NullPool

from bgworkers.demo.harness import MariaDB
from bgworkers.jobs import REGISTRY

pytestmark = pytest.mark.mariadb

EVERY, LIMIT, STUCK = 5, 2, 12  # seconds


@pytest.fixture
def second_server() -> Iterator[tuple[str, int]]:
    """Another throwaway MariaDB: (server URL, pid of mariadbd)."""
    server = MariaDB(owner_pid=os.getpid(), prefix="bgw-stuck-")
    url = server.start()
    try:
        yield url, server.pid
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.remove()


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def ok_after(core_url: str, tenant: str, after: datetime) -> bool:
    return any(
        r.tenant == tenant and r.status == "ok" and r.tick_at >= after for r in runs(core_url)
    )


@pytest.mark.parametrize("db_urls", ["mariadb"], indirect=True)
@pytest.mark.parametrize("how", ["frozen", "locked"])
def test_a_stuck_tenant_times_out_and_the_others_run_every_tick(
    db_urls: DbUrls, tmp_path: Path, second_server: tuple[str, int], how: str, make_world: MakeWorld
) -> None:
    server_url, server_pid = second_server
    stuck_url = f"{server_url}/bgw_stuck_tenant?charset=utf8mb4"
    others = "".join(
        f"[jobs.{spec.name}]\nenabled = false\n"
        for spec in REGISTRY
        if spec.name not in ("dashboard_fast", "heartbeat")
    )
    config = write_settings(
        tmp_path / "s.toml",
        db_urls,
        f"""{others}
[scheduler]
lease_ttl = "3s"
[jobs.dashboard_fast]
every = "{EVERY}s"
timeout = "{LIMIT}s"
misfire_grace = "2s"
[tenants.urls]
stuck = "{stuck_url}"
""",
    )
    make_world(config, ["DEFAULT", "maison_atelier", "stuck"], erp_schema=True)
    begin = datetime.now(UTC).replace(tzinfo=None)
    locker = sa.create_engine(stuck_url, poolclass=NullPool)
    with daemon(config, log=tmp_path / "daemon.log") as proc:
        wait_for(lambda: ok_after(db_urls.core_url, "stuck", begin), 3 * EVERY)
        with locker.connect() as lock_conn:
            stuck_from = datetime.now(UTC).replace(tzinfo=None)
            if how == "frozen":
                os.kill(server_pid, signal.SIGSTOP)
            else:
                lock_conn.exec_driver_sql("LOCK TABLES flow_token WRITE")
            time.sleep(STUCK)
            stuck_until = datetime.now(UTC).replace(tzinfo=None)
            if how == "frozen":
                os.kill(server_pid, signal.SIGCONT)
            else:
                lock_conn.exec_driver_sql("UNLOCK TABLES")
        wait_for(lambda: ok_after(db_urls.core_url, "stuck", stuck_until), 3 * EVERY)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    locker.dispose()

    rows = [r for r in runs(db_urls.core_url) if r.tick_at >= begin]
    assert not [r for r in rows if r.status == "running"]
    last_tick = max(r.tick_at for r in rows)
    for tenant in ("DEFAULT", "maison_atelier"):
        mine = sorted((r for r in rows if r.tenant == tenant), key=lambda r: r.tick_at)
        ticks = [r.tick_at for r in mine]
        assert ticks == [ticks[0] + timedelta(seconds=EVERY * i) for i in range(len(ticks))]
        assert ticks[0] <= stuck_from and ticks[-1] == last_tick
        assert {r.status for r in mine} == {"ok"}, [(r.tick_at, r.status, r.error) for r in mine]
        late = max(r.started_at - r.tick_at for r in mine)
        assert late < timedelta(seconds=1.5), late
    # the ticks whose whole limit fell inside the stuck time (a later one may still succeed)
    during = [
        r
        for r in rows
        if r.tenant == "stuck"
        and stuck_from <= r.tick_at
        and r.tick_at + timedelta(seconds=LIMIT + 1) <= stuck_until
    ]
    assert during, "no tick of the stuck tenant while it was stuck"
    for row in during:
        assert row.status == "timed_out", (row.tick_at, row.status, row.error)
        assert row.error.startswith(f"timed out after {LIMIT} s"), row.error
        assert row.ended_at < stuck_until
        assert row.ended_at - row.started_at < timedelta(seconds=LIMIT + 1)
