"""Two daemons on one MariaDB: never two runs of a (lease group, tenant) at once,
never a tick twice; a killed holder's tenant is taken over after the TTL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
from daemon_helpers import daemon, heartbeat_settings, runs
from helpers import DbUrls, MakeWorld

from bgworkers.demo.harness import events

pytestmark = pytest.mark.mariadb

TENANTS = [f"atelier_{i:02d}" for i in range(12)]


@pytest.fixture
def urls(mariadb_server_url: str, request: pytest.FixtureRequest) -> DbUrls:
    from conftest import mariadb_urls

    generator = mariadb_urls(mariadb_server_url)
    request.addfinalizer(lambda: next(generator, None))
    return next(generator)


def test_two_replicas_never_overlap_and_never_repeat_a_tick(
    urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    # Runs hold their lease 1.3 s while the job fires every second: consecutive ticks
    # of a tenant contend, on one daemon and across the two.
    config = heartbeat_settings(tmp_path / "settings.toml", urls, every="1s", hold="1.3s")
    make_world(config, TENANTS)
    with daemon(config, log=tmp_path / "a.log") as a, daemon(config, log=tmp_path / "b.log") as b:
        # and an operator's run-once beside them, again and again
        manual = 0
        deadline = time.monotonic() + 32
        while time.monotonic() < deadline:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bgworkers",
                    "run-once",
                    "heartbeat",
                    "--config",
                    str(config),
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            manual += 1
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0 and b.wait(30) == 0

    history = runs(urls.core_url)
    ticks = [(r.job, r.tenant, r.tick_at) for r in history]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    held = defaultdict(list)  # lease group (= job here) and tenant -> run intervals
    for row in history:
        if row.status not in ("skipped", "missed", "running"):  # it held the lease
            held[(row.job, row.tenant)].append((row.started_at, row.ended_at, row.pid))
    for key, intervals in held.items():
        intervals.sort()
        for (_, end, pid), (next_start, _, next_pid) in pairwise(intervals):
            assert end <= next_start, f"{key}: run of pid {pid} overlaps one of pid {next_pid}"
    statuses = defaultdict(int)
    for row in history:
        statuses[row.status] += 1
    pids = {row.pid for row in history if row.status == "ok"}
    assert {a.pid, b.pid} < pids, f"both replicas and some of {manual} run-once ran tenants"
    assert statuses["failed"] == 0
    assert statuses["ok"] >= len(TENANTS) * 10
    assert statuses["skipped"] >= len(TENANTS) * 5, f"no lease contention: {dict(statuses)}"
    assert set(held) == {("heartbeat", t) for t in TENANTS}


def test_killed_holder_is_taken_over_after_the_ttl(
    urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    codes = ["DEFAULT"]
    holder = heartbeat_settings(tmp_path / "holder.toml", urls, every="1s", hold="120s")
    make_world(holder, codes)
    with daemon(holder, log=tmp_path / "holder.log") as first:
        deadline = time.monotonic() + 20
        while not any(r.status == "running" for r in runs(urls.core_url)):
            assert time.monotonic() < deadline, "the first daemon never started a run"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
    dead_run = next(r for r in runs(urls.core_url) if r.status == "running")

    taker = heartbeat_settings(tmp_path / "taker.toml", urls, every="1s", hold="0s")
    with daemon(taker, log=tmp_path / "taker.log") as second:
        deadline = time.monotonic() + 20
        while not any(r.status == "ok" for r in runs(urls.core_url)):
            assert time.monotonic() < deadline, "the tenant was never taken over"
            time.sleep(0.1)
        taken_after = time.monotonic() - killed_at
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0

    history = runs(urls.core_url)
    dead = next(r for r in history if r.run_id == dead_run.run_id)
    assert dead.status == "abandoned"
    assert dead.error.startswith("abandoned: lease expired, taken over by ")
    assert dead.ended_at is not None
    first_ok = min(r.started_at for r in history if r.status == "ok")
    assert first_ok >= dead.started_at
    assert taken_after < 3 + 5  # TTL 3 s, plus a tick and some slack
    skipped = [r for r in history if r.status == "skipped"]
    assert skipped, "while the dead holder's lease was valid, runs were turned away"


def test_a_frozen_holder_resumed_after_a_takeover_leaves_the_record_alone(
    urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    """The successor's `abandoned` row is final: the late end of the frozen run
    does not overwrite it, and nothing in history shows overlapping runs."""
    holder = heartbeat_settings(tmp_path / "holder.toml", urls, every="1s", hold="8s")
    make_world(holder, ["DEFAULT"])
    taker = heartbeat_settings(tmp_path / "taker.toml", urls, every="1s", hold="0s")
    with daemon(holder, log=tmp_path / "holder.log") as frozen:
        deadline = time.monotonic() + 20
        while not any(r.status == "running" for r in runs(urls.core_url)):
            assert time.monotonic() < deadline, "the first daemon never started a run"
            time.sleep(0.1)
        frozen.send_signal(signal.SIGSTOP)
        held_run = next(r for r in runs(urls.core_url) if r.status == "running")
        with daemon(taker, log=tmp_path / "taker.log") as successor:
            deadline = time.monotonic() + 20
            while not any(r.status == "ok" and r.pid == successor.pid for r in runs(urls.core_url)):
                assert time.monotonic() < deadline, "the tenant was never taken over"
                time.sleep(0.1)
            successor.send_signal(signal.SIGTERM)
            assert successor.wait(30) == 0
        recorded = next(r for r in runs(urls.core_url) if r.run_id == held_run.run_id)
        assert recorded.status == "abandoned"
        frozen.send_signal(signal.SIGCONT)  # it wakes up past its TTL, mid-run
        deadline = time.monotonic() + 15
        while not events(tmp_path / "holder.log", "run_end_not_recorded"):
            assert time.monotonic() < deadline, "the resumed holder never tried to end its run"
            time.sleep(0.2)
        frozen.send_signal(signal.SIGTERM)
        assert frozen.wait(30) == 0
    after = next(r for r in runs(urls.core_url) if r.run_id == held_run.run_id)
    assert (after.status, after.error, after.ended_at) == (
        recorded.status,
        recorded.error,
        recorded.ended_at,
    )
    ended = events(tmp_path / "holder.log", "run_end_not_recorded")
    assert ended[0]["run_id"] == held_run.run_id
