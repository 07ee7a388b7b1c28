"""The runner on SQLite and MariaDB: isolation, claims, lease skips, history, run-once."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings, runs
from helpers import CliResult, DbUrls, MakeWorld, bgworkers, environment

from bgworkers.cli import main
from bgworkers.db import ensure_database
from bgworkers.engine import history
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.leases import Leases
from bgworkers.engine.runner import Runner
from bgworkers.jobs import BY_NAME
from bgworkers.schema import own
from bgworkers.service.daemon import Daemon
from bgworkers.settings import load_settings

TICK = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> Path:
    broken = (
        "sqlite:////nonexistent-dir/broken.db"
        if db_urls.backend == "sqlite"
        else db_urls.tenant("no_such_database")
    )
    path = heartbeat_settings(
        tmp_path / "s.toml", db_urls, extra=f"[tenants.urls]\nbroken = '{broken}'\n"
    )
    make_world(heartbeat_settings(tmp_path / "setup.toml", db_urls), ["DEFAULT", "maison_atelier"])
    return path


def add_broken_tenant(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    with runner.dbs.core.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO organization (id_org, code, name, status) "
            "VALUES (9, 'broken', 'Broken', 'active')"
        )
    runner.close()


def test_one_broken_tenant_fails_alone_and_everything_is_recorded(
    db_urls: DbUrls, config: Path
) -> None:
    add_broken_tenant(db_urls, config)
    runner = Runner(load_settings(config), BY_NAME)
    try:
        result = runner.tick("heartbeat", TICK)
    finally:
        runner.close()
    assert {code: r.status for code, r in result.tenants.items()} == {
        "DEFAULT": "ok",
        "maison_atelier": "ok",
        "broken": "failed",
    }
    assert result.failed
    assert result.total(("tenants", "checks", "errors")) == {"tenants": 3, "checks": 2, "errors": 1}
    rows = {row.tenant: row for row in runs(db_urls.core_url)}
    assert {t: r.status for t, r in rows.items()} == {
        "DEFAULT": "ok",
        "maison_atelier": "ok",
        "broken": "failed",
    }
    assert "Traceback" in rows["broken"].error
    assert json.loads(rows["DEFAULT"].counters) == {"checks": 1}
    for row in rows.values():
        assert row.tick_at == TICK.replace(tzinfo=None)
        assert row.started_at <= row.ended_at


def test_a_tick_runs_once_per_tenant(db_urls: DbUrls, config: Path) -> None:
    first, second = Runner(load_settings(config), BY_NAME), Runner(load_settings(config), BY_NAME)
    try:
        assert all(r.status == "ok" for r in first.tick("heartbeat", TICK).tenants.values())
        again = second.tick("heartbeat", TICK)  # another replica firing the same tick
        assert {r.status for r in again.tenants.values()} == {"claimed"}
        assert not again.failed
    finally:
        first.close()
        second.close()
    assert len(runs(db_urls.core_url)) == 2


def test_a_miss_recorded_elsewhere_never_takes_the_tick_away(db_urls: DbUrls, config: Path) -> None:
    late, healthy = Runner(load_settings(config), BY_NAME), Runner(load_settings(config), BY_NAME)
    try:
        # a replica that cannot run the tick (its previous run still going) says so first
        late._tenant_missed(
            "heartbeat", "DEFAULT", TICK, "previous run of this tenant still running"
        )
        result = healthy.tick("heartbeat", TICK)
        # and a miss recorded after the tick ran changes nothing
        late._tenant_missed("heartbeat", "maison_atelier", TICK, "too late")
    finally:
        late.close()
        healthy.close()
    assert {code: r.status for code, r in result.tenants.items()} == {
        "DEFAULT": "ok",
        "maison_atelier": "ok",
    }
    rows = runs(db_urls.core_url)
    assert [(r.tenant, r.status, r.error) for r in rows] == [
        ("DEFAULT", "ok", None),
        ("maison_atelier", "ok", None),
    ]
    assert all(r.started_at <= r.ended_at for r in rows)


def test_a_claim_whose_answer_was_lost_is_closed_missed(db_urls: DbUrls, config: Path) -> None:
    # The claim committed, but the database went away before the replica heard so: its
    # deferred miss closes its own running row instead of leaving it `running` for ever,
    # and never touches a row another run holds.
    runner = Runner(load_settings(config), BY_NAME)
    tick = TICK.replace(tzinfo=None)
    try:
        engine = runner.dbs.coordination
        for tenant, run_id in (("DEFAULT", "lost-answer"), ("maison_atelier", "running-elsewhere")):
            with engine.begin() as conn:
                assert history.claim(conn, "heartbeat", tenant, tick, run_id, "host-a", 1)
        reason = "not run: coordination database unavailable"
        assert history.record_missed(
            engine, "heartbeat", "DEFAULT", tick, "lost-answer", "host-a", 1, reason
        )
        assert not history.record_missed(
            engine, "heartbeat", "maison_atelier", tick, "mine", "host-b", 2, reason
        )
    finally:
        runner.close()
    assert {(r.tenant, r.run_id, r.status, r.error) for r in runs(db_urls.core_url)} == {
        ("DEFAULT", "lost-answer", "missed", reason),
        ("maison_atelier", "running-elsewhere", "running", None),
    }


def test_held_lease_skips_the_tenant_with_a_history_row(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    other = Leases(lambda: runner.dbs.coordination, "elsewhere:1", 30)
    held = other.acquire("heartbeat", "DEFAULT", "someone-else")
    assert held is not None
    try:
        result = runner.tick("heartbeat", TICK)
    finally:
        other.release(held)
        runner.close()
    assert result.tenants["DEFAULT"].status == "skipped"
    assert result.tenants["maison_atelier"].status == "ok"
    assert not result.failed
    assert result.as_json(("tenants", "checks", "errors")) == {
        "job": "heartbeat",
        "tenants": {"DEFAULT": {"skipped": 1}, "maison_atelier": {"checks": 1}},
        "total": {"tenants": 1, "checks": 1, "errors": 0, "skipped": 1},
    }
    statuses = {row.tenant: (row.status, row.error) for row in runs(db_urls.core_url)}
    assert statuses["DEFAULT"] == ("skipped", "lease held by another run")


def run_once(config: Path, *args: str) -> CliResult:
    return bgworkers("run-once", "heartbeat", "--config", str(config), *args)


def test_run_once_json_and_exit_status(db_urls: DbUrls, config: Path) -> None:
    ok = run_once(config, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "job": "heartbeat",
        "tenants": {"DEFAULT": {"checks": 1}, "maison_atelier": {"checks": 1}},
        "total": {"tenants": 2, "checks": 2, "errors": 0},
    }
    one = run_once(config, "--tenant", "maison_atelier")
    assert one.returncode == 0
    assert "maison_atelier" in one.stdout and "DEFAULT" not in one.stdout
    unknown = run_once(config, "--tenant", "nobody")
    assert unknown.returncode == 1
    assert "tenant nobody: not in core organization" in unknown.stderr
    add_broken_tenant(db_urls, config)
    failed = run_once(config, "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["total"]["errors"] == 1


def run_once_on_a_terminal(config: Path, columns: int = 80) -> str:
    """run-once with stdout and stderr on a pseudo-terminal (logging format auto)."""
    leader, follower = pty.openpty()
    received: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(leader, 65536):
                received.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    env = {"COLUMNS": str(columns), "BGWORKERS_LOGGING__FORMAT": "auto", "JOURNAL_STREAM": None}
    with (
        open(follower, "w", buffering=1) as terminal,
        environment(env),
        contextlib.redirect_stdout(terminal),
        contextlib.redirect_stderr(terminal),
    ):
        code = main(["run-once", "heartbeat", "--config", str(config)])
    reader.join(timeout=30)
    os.close(leader)
    assert code == 1
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(received).decode()).replace("\r\n", "\n")


def test_run_once_on_a_terminal_prints_each_counter_once_and_the_real_error(
    db_urls: DbUrls, config: Path
) -> None:
    add_broken_tenant(db_urls, config)
    text = run_once_on_a_terminal(config)
    rows = text.splitlines()
    logged = [row for row in rows if re.match(r"\d\d:\d\d:\d\d ", row)]
    assert all(len(row) < 80 for row in logged), text  # no line wraps on 80 columns
    assert logged and all(row.split()[1] in ("WARN", "ERROR") for row in logged), text
    assert not any("job_tenant_result" in row or "job_run_summary" in row for row in rows)
    assert text.count("checks=1") == 2  # once per ok tenant, in the summary only
    [broken] = [row for row in rows if row.startswith("  broken ")]
    why = "unable to open database file" if db_urls.backend == "sqlite" else "Unknown database"
    assert "failed" in broken and why in broken, text
    assert "Background on this error" not in text and "sqlalche.me" not in text
    [run_failed] = [row for row in logged if "run_failed" in row]
    assert "heartbeat/broken" in run_failed


def test_status_line_time_stamps_the_last_error_and_clears_it_after_recovery(
    db_urls: DbUrls, config: Path, tmp_path: Path
) -> None:
    add_broken_tenant(db_urls, config)
    clock = FixedClock(TICK.replace(hour=17, minute=42, second=5))
    daemon = Daemon(config, load_settings(config), clock)
    try:
        daemon.runner.tick("heartbeat", TICK)
        assert "; last error 17:42:05 UTC: heartbeat/broken: OperationalError: " in (
            daemon.status()
        )
        clock.at = TICK.replace(hour=18)
        daemon.runner.tick("heartbeat", TICK.replace(hour=11))  # still broken: a newer error
        assert "last error 18:00:00 UTC: heartbeat/broken" in daemon.status()
        repaired = load_settings(
            heartbeat_settings(
                tmp_path / "repaired.toml",
                db_urls,
                extra=(f"[tenants.urls]\nbroken = '{db_urls.tenant('repaired')}'\n"),
            )
        )
        ensure_database(sa.make_url(db_urls.tenant("repaired")), repaired.database)
        daemon.runner.update(repaired)
        result = daemon.runner.tick("heartbeat", TICK.replace(hour=12), only="broken")
        assert result.tenants["broken"].status == "ok", result.tenants["broken"].error
        assert "last error" not in daemon.status()  # recovered: the error is over
    finally:
        daemon.runner.close()


def test_a_dry_run_writes_no_history_and_no_lease(db_urls: DbUrls, config: Path) -> None:
    add_broken_tenant(db_urls, config)
    runner = Runner(load_settings(config), BY_NAME)
    try:
        real = runner.tick("heartbeat", TICK)
        before = [tuple(r) for r in runs(db_urls.core_url)]
        dry = runner.tick("heartbeat", TICK.replace(hour=11), dry_run=True)
    finally:
        runner.close()
    assert real.failed and dry.failed  # a dry run reports what it finds ...
    assert dry.as_json(("tenants", "checks", "errors"))["dry_run"] is True
    assert {c: r.status for c, r in dry.tenants.items()} == {
        "DEFAULT": "ok",
        "maison_atelier": "ok",
        "broken": "failed",
    }
    assert [tuple(r) for r in runs(db_urls.core_url)] == before  # ... and records nothing
    engine = sa.create_engine(db_urls.core_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(own.lease)).scalar_one() == 0
    engine.dispose()


def test_a_late_firing_is_recorded_missed_for_every_tenant(db_urls: DbUrls, config: Path) -> None:
    runner = Runner(load_settings(config), BY_NAME)
    try:
        first = runner.tick("heartbeat", TICK)
        runner.record_missed("heartbeat", TICK, "fired 75.0s late")  # ran already: no-op
        runner.record_missed("heartbeat", TICK.replace(hour=11), "fired 75.0s late")
    finally:
        runner.close()
    assert {r.status for r in first.tenants.values()} == {"ok"}
    rows = {(r.tenant, r.tick_at.hour): (r.status, r.error) for r in runs(db_urls.core_url)}
    assert rows == {
        ("DEFAULT", 10): ("ok", None),
        ("maison_atelier", 10): ("ok", None),
        ("DEFAULT", 11): ("missed", "fired 75.0s late"),
        ("maison_atelier", 11): ("missed", "fired 75.0s late"),
    }


def test_a_missing_column_fails_the_run_naming_database_table_column_and_fix(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(
        tmp_path / "erp.toml", db_urls, extra="[jobs.serial_outbox]\nenabled = true\n"
    )
    make_world(config, ["DEFAULT"], erp_schema=True)
    engine = sa.create_engine(db_urls.tenant("DEFAULT"), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # an install whose upgrade was never run
        for index in sa.inspect(conn).get_indexes("serial_link_outbox"):
            if "next_attempt_at" in index["column_names"]:
                conn.execute(
                    sa.text(
                        f"DROP INDEX {index['name']}"
                        + ("" if db_urls.backend == "sqlite" else " ON serial_link_outbox")
                    )
                )
        conn.execute(sa.text("ALTER TABLE serial_link_outbox DROP COLUMN next_attempt_at"))
    engine.dispose()
    runner = Runner(load_settings(config), BY_NAME)
    try:
        result = runner.tick("serial_outbox", TICK)
    finally:
        runner.close()
    outcome = result.tenants["DEFAULT"]
    assert outcome.status == "failed" and outcome.error is not None
    database = sa.engine.make_url(db_urls.tenant("DEFAULT")).database
    assert outcome.error.splitlines()[0] == (
        f"tenant DEFAULT database {database}: table serial_link_outbox has no column "
        "next_attempt_at; run `bgworkers db upgrade`"
    )
