"""bgworkers status from run history: OK, LATE, FAILING and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from daemon_helpers import heartbeat_settings, tenant_setup
from helpers import DbUrls

from bgworkers.schema.own import run


def add_runs(core_url: str, rows: list[tuple[str, str, timedelta]]) -> None:
    """(tenant, status, age) rows of heartbeat history, times relative to the DB's now."""
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    now = datetime.now(UTC).replace(tzinfo=None)  # history is naive UTC
    with engine.begin() as conn:
        conn.execute(run.insert(), [
            {"job": "heartbeat", "tenant": tenant, "tick_at": now - age, "run_id": f"r{i}",
             "host": "h", "pid": 1, "started_at": now - age,
             "ended_at": now - age + timedelta(seconds=2), "status": status,
             "counters": '{"checks": 1}', "error": "boom" if status == "failed" else None}
            for i, (tenant, status, age) in enumerate(rows)])
    engine.dispose()


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bgworkers", "status", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def test_verdicts_and_exit_status(db_urls: DbUrls, tmp_path: Path) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    tenant_setup(db_urls, config, ["fresh", "stale", "broken", "newcomer"])
    minute = timedelta(minutes=1)
    add_runs(db_urls.core_url, [
        ("fresh", "ok", 5 * minute), ("fresh", "skipped", 2 * minute), ("fresh", "ok", minute / 2),
        ("stale", "ok", 10 * minute), ("stale", "missed", minute),
        ("broken", "ok", 3 * minute), ("broken", "failed", minute),
    ])
    result = status(config, "--json")
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    health = {r["tenant"]: r["health"] for r in doc["runs"]}
    assert health == {"fresh": "OK", "stale": "LATE", "broken": "FAILING", "newcomer": "LATE"}
    assert doc["health"] == "FAILING"
    fresh = next(r for r in doc["runs"] if r["tenant"] == "fresh")
    assert fresh["result"] == "ok" and fresh["counters"] == {"checks": 1}
    assert fresh["took_s"] == 2.0 and fresh["next_tick"] is not None

    add_runs(db_urls.core_url, [("broken", "ok", minute / 4)])
    late = status(config)
    assert late.returncode == 1
    lines = {line.split()[1]: line for line in late.stdout.splitlines()[1:]}
    assert lines["broken"].split()[2] == "OK"
    assert " never " in lines["newcomer"]

    add_runs(db_urls.core_url, [(t, "ok", minute / 4) for t in ("stale", "newcomer")])
    assert status(config).returncode == 0
