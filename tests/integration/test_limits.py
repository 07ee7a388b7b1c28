"""Runtime limits and per-tenant ticks on SQLite and MariaDB: a held lock ends one run.

A tenant whose database is locked times out at its job's limit, is recorded
failed with the statement it was in and releases its lease; the other tenant
runs every tick; a second tick while the run still hangs is missed for that
tenant alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings, runs
from helpers import DbUrls, MakeWorld
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bgworkers.db import limits
from bgworkers.engine.runner import Runner, TickResult
from bgworkers.jobs import BY_NAME
from bgworkers.schema import own
from bgworkers.settings import load_settings

TICK = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LIMIT = 2.0


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> Path:
    path = heartbeat_settings(
        tmp_path / "s.toml",
        db_urls,
        extra=f"""
[jobs.serial_outbox]
enabled = true
timeout = "{LIMIT:g}s"
""",
    )
    make_world(path, ["DEFAULT", "maison_atelier"], erp_schema=True)
    return path


@contextmanager
def locked(db_urls: DbUrls, code: str) -> Iterator[None]:
    """Another session holds the outbox table of `code` as an ERP process could."""
    url = db_urls.tenant(code)
    if db_urls.backend == "sqlite":
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("LOCK TABLES serial_link_outbox WRITE")
        try:
            yield
        finally:
            conn.exec_driver_sql("UNLOCK TABLES")
    engine.dispose()


def leases_held(core_url: str) -> int:
    engine = sa.create_engine(core_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(own.lease)).scalar_one())
    finally:
        engine.dispose()


def test_a_held_lock_ends_only_that_tenants_run(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    try:
        with locked(db_urls, "DEFAULT"):
            started = time.monotonic()
            result = runner.tick("serial_outbox", TICK)
            took = time.monotonic() - started
        stuck, other = result.tenants["DEFAULT"], result.tenants["maison_atelier"]
        assert other.status == "ok"
        assert stuck.status == "timed_out"
        assert stuck.error is not None
        assert stuck.error.startswith(f"timed out after {LIMIT:g} s in: ")
        assert LIMIT - 0.1 < took < LIMIT + 1.5, took
        assert runner.stalled == {"DEFAULT"}
        assert leases_held(db_urls.core_url) == 0
        # The lock is gone: the tenant runs again (in the slow lane) and leaves it.
        again = runner.tick("serial_outbox", TICK + timedelta(minutes=5))
        assert {r.status for r in again.tenants.values()} == {"ok"}
        assert runner.stalled == set()
    finally:
        runner.close()
    rows = {(r.tenant, r.tick_at): r for r in runs(db_urls.core_url)}
    failed = rows["DEFAULT", TICK.replace(tzinfo=None)]
    assert (failed.status, failed.error) == ("timed_out", stuck.error)
    assert {r.status for r in rows.values()} == {"ok", "timed_out"}


def test_a_slow_tenant_misses_its_own_ticks_only(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    done: list[TickResult] = []
    finished = threading.Event()

    def on_done(result: TickResult) -> None:
        done.append(result)
        finished.set()

    try:
        with locked(db_urls, "DEFAULT"):
            first = runner.tick("serial_outbox", TICK, wait=False, on_done=on_done)
            deadline = time.monotonic() + 5
            while "maison_atelier" not in first.tenants and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.tenants["maison_atelier"].status == "ok"
            assert runner.running() == [("serial_outbox", "DEFAULT")]
            # The next tick comes while DEFAULT still waits for the lock.
            second = runner.tick("serial_outbox", TICK + timedelta(minutes=5))
            assert second.tenants["DEFAULT"].status == "missed"
            assert second.tenants["DEFAULT"].error == "previous run of this tenant still running"
            assert second.tenants["maison_atelier"].status == "ok"
            assert finished.wait(LIMIT + 5)
        assert done == [first]
        assert first.tenants["DEFAULT"].status == "timed_out"
        assert runner.running() == []
    finally:
        runner.close()
    rows = {(r.tenant, r.tick_at.isoformat()): (r.status, r.error) for r in runs(db_urls.core_url)}
    assert rows == {
        ("DEFAULT", "2026-11-22T10:00:00"): ("timed_out", first.tenants["DEFAULT"].error),
        ("maison_atelier", "2026-11-22T10:00:00"): ("ok", None),
        ("DEFAULT", "2026-11-22T10:05:00"): ("missed", "previous run of this tenant still running"),
        ("maison_atelier", "2026-11-22T10:05:00"): ("ok", None),
    }


def test_a_stuck_tenant_never_takes_the_workers_of_the_others(
    db_urls: DbUrls, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once it timed out, the stuck tenant waits in a lane of its own: with one
    worker, the other tenant's runs still start at once."""
    monkeypatch.setenv("BGWORKERS_SCHEDULER__MAX_WORKERS", "1")
    runner = Runner(load_settings(config), BY_NAME)
    try:
        with locked(db_urls, "DEFAULT"):
            assert runner.tick("serial_outbox", TICK).tenants["DEFAULT"].status == "timed_out"
            held = runner.tick("serial_outbox", TICK + timedelta(minutes=5), wait=False)
            time.sleep(0.3)
            assert runner.running() == [("serial_outbox", "DEFAULT")]
            started = time.monotonic()
            beat = runner.tick("heartbeat", TICK, wait=False)
            while "maison_atelier" not in beat.tenants and time.monotonic() - started < LIMIT:
                time.sleep(0.02)
            assert time.monotonic() - started < LIMIT / 2
            assert beat.tenants["maison_atelier"].status == "ok"
            assert "DEFAULT" not in beat.tenants  # queued behind its stuck run
            time.sleep(LIMIT)
        assert held.tenants["DEFAULT"].status == "timed_out"
    finally:
        runner.close()


@pytest.mark.parametrize("seconds", [3.0, 7.4])
def test_session_limits_follow_the_run(db_urls: DbUrls, config: Path, seconds: float) -> None:
    """Inside a run the session carries the time left; outside, the server's own values."""
    runner = Runner(load_settings(config), BY_NAME)
    engine = runner.dbs.tenant("DEFAULT")
    try:
        if db_urls.backend == "sqlite":
            with limits.limited(seconds), engine.connect() as conn:
                assert (
                    seconds * 1000 - 100
                    < conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
                    <= seconds * 1000
                )
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
            return
        query = (
            "SELECT @@session.max_statement_time, @@session.lock_wait_timeout, "
            "@@session.innodb_lock_wait_timeout"
        )
        with engine.connect() as conn:
            server = tuple(conn.exec_driver_sql(query).one())
        with limits.limited(seconds), engine.connect() as conn:
            statement, lock, innodb = conn.exec_driver_sql(query).one()
        assert seconds - 0.1 < float(statement) <= seconds
        assert lock == innodb == int(seconds + 0.999)
        with engine.connect() as conn:  # the same pooled connection, reset
            assert tuple(conn.exec_driver_sql(query).one()) == server
        assert server[1] > seconds  # the server's own values are not the run's
    finally:
        runner.close()


def test_a_run_past_its_limit_sends_no_more_statements(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    engine = runner.dbs.tenant("DEFAULT")
    try:
        # closing may fail: by then the watchdog may have cut the connection too
        with (
            limits.limited(0.2) as limit,
            contextlib.suppress(sa.exc.OperationalError),
            engine.connect() as conn,
        ):
            conn.exec_driver_sql("SELECT 1")
            time.sleep(0.3)
            with pytest.raises(limits.RunTimedOut, match=r"^timed out after 0.2 s in: SELECT 1$"):
                conn.exec_driver_sql("SELECT 2")
        assert limit.statement == "SELECT 1"
    finally:
        runner.close()
