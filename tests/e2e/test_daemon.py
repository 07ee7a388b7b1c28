"""`bgworkers run` as a real process: sd_notify, watchdog, reload, stop, signals."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import daemon, heartbeat_settings, runs
from helpers import DbUrls, MakeWorld

from bgworkers.demo.harness import NotifyListener, events
from bgworkers.schema import own


@pytest.fixture
def urls(tmp_path: Path) -> DbUrls:
    return DbUrls(
        "sqlite", f"sqlite:///{tmp_path}/core.db", f"sqlite:///{tmp_path}/tenant_{{code_lower}}.db"
    )


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    notify = NotifyListener()
    yield notify
    notify.close()


def wait_until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_lifecycle_ready_watchdog_reload_stop(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s")
    make_world(config, ["DEFAULT", "maison_atelier"])
    log = tmp_path / "daemon.log"
    env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "2000000"}
    with daemon(config, env, log) as proc:
        ready = listener.wait_for("READY")
        assert ready["MAINPID"] == str(proc.pid)
        assert "1 jobs scheduled" in ready["STATUS"]
        listener.wait_for("WATCHDOG")
        wait_until(lambda: len(events(log, "job_tenant_result")) >= 4)
        assert {e["tenant"] for e in events(log, "job_tenant_result")} == {
            "DEFAULT",
            "maison_atelier",
        }

        # a valid reload reschedules in place
        heartbeat_settings(config, urls, every="7s")
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING")
        listener.wait_for("READY")
        wait_until(lambda: events(log, "reload_applied"))
        applied = events(log, "reload_applied")[0]
        assert applied["reschedule"] == ["heartbeat"]
        fire = datetime.strptime(applied["jobs"]["heartbeat"], "%Y-%m-%d %H:%M:%S%z")
        assert fire.timestamp() % 7 == 0  # aligned to the epoch, like every replica's
        assert 0 < fire.timestamp() - time.time() <= 7

        # an invalid one keeps the old schedule and says why
        config.write_text(config.read_text().replace('every = "7s"', 'every = "7 parsecs"'))
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING")
        status = listener.wait_for("READY")["STATUS"]
        assert status.startswith("reload failed, running on previous settings: ")
        assert "jobs.heartbeat.every: invalid duration '7 parsecs'" in status
        failed = events(log, "reload_failed")
        assert failed and failed[0]["level"] == "error"
        before = len(events(log, "job_tenant_result"))
        wait_until(lambda: len(events(log, "job_tenant_result")) >= before + 2, timeout=20)
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        assert proc.wait(15) == 0
    assert events(log, "daemon_stopped")
    assert {row.status for row in runs(urls.core_url)} == {"ok"}


def test_stop_waits_for_running_tenant_runs(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s", hold="3s")
    make_world(config, ["DEFAULT"])
    with daemon(config, {"NOTIFY_SOCKET": listener.path}, tmp_path / "d.log") as proc:
        listener.wait_for("READY")
        wait_until(lambda: any(r.status == "running" for r in runs(urls.core_url)))
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        waited = time.monotonic() - stopped_at
    assert 0.5 < waited < 10
    history = runs(urls.core_url)
    assert history[0].status == "ok" and history[0].ended_at is not None
    assert all(r.status != "running" for r in history)


def test_second_signal_exits_at_once(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s", hold="60s")
    make_world(config, ["DEFAULT"])
    log = tmp_path / "d.log"
    with daemon(config, {"NOTIFY_SOCKET": listener.path}, log) as proc:
        listener.wait_for("READY")
        wait_until(lambda: any(r.status == "running" for r in runs(urls.core_url)))
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        time.sleep(0.5)
        assert proc.poll() is None  # still draining
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 1
        assert time.monotonic() - started < 3
    assert events(log, "daemon_forced_exit")


def test_bad_settings_at_start_exit_2(tmp_path: Path, urls: DbUrls) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="0s")
    with daemon(config, {}, tmp_path / "d.log") as proc:
        assert proc.wait(30) == 2
    assert "jobs.heartbeat.every: must be longer than 0" in (tmp_path / "d.log").read_text()


def test_a_notify_receiver_that_stops_reading_does_not_stall_jobs(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s")
    make_world(config, ["DEFAULT"])
    listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # fills at once
    log = tmp_path / "d.log"
    with daemon(config, {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "500000"}, log) as proc:
        listener.wait_for("READY")  # and never read again
        wait_until(lambda: len(events(log, "job_run_summary")) >= 6, timeout=30)
        assert not events(log, "tick_missed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_metrics_endpoint_of_a_running_daemon(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = heartbeat_settings(
        tmp_path / "settings.toml",
        urls,
        every="1s",
        extra=f"""
[metrics]
listen = "127.0.0.1:{port}"
[jobs.serial_outbox]
enabled = true
every = "1h"
""",
    )
    make_world(config, ["DEFAULT"], erp_schema=True)
    with daemon(config, {"NOTIFY_SOCKET": listener.path}, tmp_path / "d.log") as proc:
        listener.wait_for("READY")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())

        ok = 'bgworkers_runs_total{job_name="heartbeat",status="ok",tenant="DEFAULT"}'
        # the series is there at 0 from the start: wait for a counted run
        wait_until(lambda: f"{ok} 0.0" not in scrape())
        text = scrape()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples[ok] >= 1
    assert samples['bgworkers_run_duration_seconds_count{job_name="heartbeat"}'] >= 1
    assert (
        samples['bgworkers_last_success_timestamp_seconds{job_name="heartbeat",tenant="DEFAULT"}']
        > time.time() - 60
    )
    assert samples['bgworkers_outbox_rows{status="pending",tenant="DEFAULT"}'] == 0
    assert samples['bgworkers_outbox_oldest_pending_age_seconds{tenant="DEFAULT"}'] == 0
    assert samples['bgworkers_quarantine_open{reason="orphaned",tenant="DEFAULT"}'] == 0


def test_a_stop_past_the_grace_records_the_runs_interrupted_and_exits_0(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s", hold="60s")
    make_world(config, ["DEFAULT", "maison_atelier"])
    log = tmp_path / "d.log"
    env = {"NOTIFY_SOCKET": listener.path, "BGWORKERS_SCHEDULER__SHUTDOWN_GRACE": "1s"}
    with daemon(config, env, log) as proc:
        listener.wait_for("READY")
        wait_until(lambda: sum(r.status == "running" for r in runs(urls.core_url)) == 2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 5
    history = runs(urls.core_url)
    assert {(r.tenant, r.status) for r in history} == {
        ("DEFAULT", "interrupted"),
        ("maison_atelier", "interrupted"),
    }
    assert all(r.error.startswith("interrupted: the daemon stopped") for r in history)
    assert all(r.ended_at is not None for r in history)
    exceeded = events(log, "shutdown_grace_exceeded")
    assert sorted(exceeded[0]["interrupted"]) == ["heartbeat/DEFAULT", "heartbeat/maison_atelier"]
    assert {e["tenant"] for e in events(log, "run_interrupted")} == {"DEFAULT", "maison_atelier"}
    engine = sa.create_engine(urls.core_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bgw_lease")).scalar_one() == 0
    engine.dispose()


def test_catch_up_runs_the_tick_missed_while_no_daemon_ran(
    urls: DbUrls, tmp_path: Path, listener: NotifyListener, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(
        tmp_path / "settings.toml", urls, every="1h", extra="catch_up = true\n"
    )
    make_world(config, ["DEFAULT", "maison_atelier", "newcomer"])
    now = datetime.now(UTC)
    if now.minute == 59 and now.second > 50:  # keep the hour from turning mid-test
        time.sleep(11)
        now = datetime.now(UTC)
    missed = now.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    engine = sa.create_engine(urls.core_url)
    with engine.begin() as conn:
        for tenant, tick in (
            ("DEFAULT", missed - timedelta(hours=1)),  # then the daemon stopped
            ("maison_atelier", missed),
        ):  # ran it before the restart
            conn.execute(
                sa.insert(own.run).values(
                    job="heartbeat",
                    tenant=tenant,
                    tick_at=tick,
                    run_id=f"{tenant}-{tick:%H}",
                    host="earlier",
                    pid=1,
                    started_at=tick,
                    ended_at=tick,
                    status="ok",
                )
            )
    engine.dispose()
    log = tmp_path / "d.log"
    with daemon(config, {"NOTIFY_SOCKET": listener.path}, log) as proc:
        listener.wait_for("READY")
        wait_until(
            lambda: any(
                r.tenant == "DEFAULT" and r.tick_at == missed and r.status == "ok"
                for r in runs(urls.core_url)
            )
        )
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    rows = sorted((r.tenant, r.tick_at, r.status) for r in runs(urls.core_url))
    assert rows == [
        ("DEFAULT", missed - timedelta(hours=1), "ok"),
        ("DEFAULT", missed, "ok"),
        ("maison_atelier", missed, "ok"),
    ]  # newcomer never ran: not caught up
    assert [e["tenants"] for e in events(log, "catch_up")] == [["DEFAULT"]]
