"""`bgworkers pause|resume`: recorded in the coordination database, obeyed by the runner,
shown by `status` and `jobs`; on SQLite and MariaDB."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings, runs
from helpers import DbUrls, MakeWorld, bgworkers

from bgworkers.engine.runner import Runner
from bgworkers.jobs import BY_NAME
from bgworkers.schema import own
from bgworkers.settings import load_settings

TICK = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> Path:
    path = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(path, ["alpha", "beta"])
    return path


def cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    done = bgworkers(*args, "--config", str(config))
    return done.returncode, done.stdout


def tick(config: Path, at: datetime) -> dict[str, tuple[str, str | None]]:
    runner = Runner(load_settings(config), BY_NAME)
    try:
        result = runner.tick("heartbeat", at)
    finally:
        runner.close()
    return {code: (r.status, r.error) for code, r in result.tenants.items()}


def history_at(core_url: str, at: datetime) -> dict[str, tuple[str, str | None]]:
    return {
        r.tenant: (r.status, r.error)
        for r in runs(core_url)
        if r.tick_at == at.replace(tzinfo=None)
    }


def status_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code, out = cli(config, capsys, "status", "--json")
    return code, json.loads(out)


def jobs_paused_cell(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, out = cli(config, capsys, "jobs")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[-1] == "PAUSED"
    start = header.index("PAUSED")
    heartbeat = next(r for r in rows if r.startswith("heartbeat "))
    return heartbeat[start:].strip()


PAUSED_BY = re.compile(r"paused by \S+@\S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: disk swap$")


def test_a_paused_tenant_is_skipped_while_the_other_runs_until_resumed(
    db_urls: DbUrls, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(
        config, capsys, "pause", "heartbeat", "--tenant", "alpha", "--reason", "disk swap"
    )
    assert code == 0 and out.startswith("heartbeat: paused for tenant alpha: paused by ")

    first = tick(config, TICK)
    assert first["beta"] == ("ok", None)
    assert first["alpha"][0] == "skipped" and PAUSED_BY.fullmatch(str(first["alpha"][1]))
    recorded = history_at(db_urls.core_url, TICK)
    assert recorded["beta"][0] == "ok" and recorded["alpha"] == first["alpha"]

    code, doc = status_json(config, capsys)
    assert code == 0 and doc["verdict"] == "OK"
    assert doc["counts"] == {"critical": 0, "warning": 0, "ok": 1, "paused": 1}
    alpha = next(p for p in doc["pairs"] if p["tenant"] == "alpha")
    assert alpha["state"] == "PAUSED" and PAUSED_BY.fullmatch(alpha["reasons"][0])
    assert alpha["paused"]["tenant"] == "alpha" and alpha["paused"]["reason"] == "disk swap"
    assert alpha["paused"]["paused_at"].endswith("+00:00")
    assert alpha["last_run"]["outcome"] == "skipped"  # history stays what it is
    code, out = cli(config, capsys, "status")
    assert out.splitlines()[0] == (
        "BGWORKERS OK - 0 critical, 0 warning, 1 ok, 1 paused (2 job/tenant pairs)"
    )
    assert re.search(r"^PAUSED\s+heartbeat\s+alpha\s", out, re.M)
    assert jobs_paused_cell(config, capsys) == "alpha"

    code, out = cli(config, capsys, "pause", "heartbeat", "--tenant", "alpha")
    assert code == 0 and out.startswith(
        "heartbeat: already paused (left as it was) for tenant alpha: paused by "
    )
    assert out.rstrip().endswith(": disk swap")  # the first pause and its reason stand

    code, out = cli(config, capsys, "resume", "heartbeat", "--tenant", "alpha")
    assert code == 0 and out.startswith("heartbeat: resumed for tenant alpha (was paused by ")
    assert tick(config, TICK + MINUTE) == {"alpha": ("ok", None), "beta": ("ok", None)}
    assert jobs_paused_cell(config, capsys) == "-"
    code, doc = status_json(config, capsys)
    assert code == 0 and doc["counts"]["paused"] == 0
    assert cli(config, capsys, "resume", "heartbeat", "--tenant", "alpha") == (
        0,
        "heartbeat: was not paused for tenant alpha: nothing to resume\n",
    )


def test_a_pause_for_all_tenants(
    db_urls: DbUrls, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(config, capsys, "pause", "heartbeat", "--reason", "disk swap")
    assert code == 0 and out.startswith("heartbeat: paused for all tenants: paused by ")
    result = tick(config, TICK)
    assert {code: status for code, (status, _) in result.items()} == {
        "alpha": "skipped",
        "beta": "skipped",
    }
    assert all(PAUSED_BY.fullmatch(str(error)) for _, error in result.values())
    assert jobs_paused_cell(config, capsys) == "all tenants"
    code, doc = status_json(config, capsys)
    assert code == 0 and doc["verdict"] == "OK"
    assert [p["state"] for p in doc["pairs"]] == ["PAUSED", "PAUSED"]
    assert all(p["paused"]["all_tenants"] for p in doc["pairs"])

    # a tenant's own pause cannot lift the pause for all tenants
    code, out = cli(config, capsys, "resume", "heartbeat", "--tenant", "alpha")
    assert code == 1
    assert out.splitlines()[-1].startswith(
        "heartbeat: still paused for all tenants, so for alpha too: paused by "
    )
    assert cli(config, capsys, "pause", "heartbeat", "--tenant", "beta")[0] == 0
    code, out = cli(config, capsys, "resume", "heartbeat")  # every pause of the job
    assert code == 0
    assert [line.split(" (was ")[0] for line in out.splitlines()] == [
        "heartbeat: resumed for all tenants",
        "heartbeat: resumed for tenant beta",
    ]
    assert tick(config, TICK + MINUTE) == {"alpha": ("ok", None), "beta": ("ok", None)}


def test_a_dry_run_ignores_pauses_and_an_unreadable_pause_table_stops_nothing(
    db_urls: DbUrls, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(config, capsys, "pause", "heartbeat")[0] == 0
    runner = Runner(load_settings(config), BY_NAME)
    try:
        dry = runner.tick("heartbeat", TICK, dry_run=True)
    finally:
        runner.close()
    assert {c: r.status for c, r in dry.tenants.items()} == {"alpha": "ok", "beta": "ok"}

    engine = sa.create_engine(db_urls.core_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE bgw_pause"))
    engine.dispose()
    assert tick(config, TICK) == {"alpha": ("ok", None), "beta": ("ok", None)}
    # status cannot know what is paused: it says so instead of guessing
    code, out = cli(config, capsys, "status")
    assert code == 3 and out.startswith("BGWORKERS UNKNOWN - pauses (bgw_pause) unreadable")
    code, out = cli(config, capsys, "jobs")
    assert code == 0 and "(PAUSED unknown: coordination database: " in out
    code, out = cli(config, capsys, "db", "check")
    assert code == 1 and "bgw_pause" in out


def test_unknown_job_or_tenant_is_bad_usage(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = bgworkers("pause", "nightly", "--config", str(config))
    assert done.returncode == 2
    assert "invalid choice: 'nightly'" in done.stderr and "'heartbeat'" in done.stderr
    assert cli(config, capsys, "pause", "heartbeat", "--tenant", "Alpha") == (
        2,
        "tenant Alpha: not in core organization; did you mean 'alpha'?\n",
    )
    assert cli(config, capsys, "resume", "heartbeat", "--tenant", "nobody") == (
        2,
        "tenant nobody: not in core organization\n",
    )


def test_db_upgrade_adds_the_pause_table_to_an_older_coordination_database(
    db_urls: DbUrls, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls)
    make_world(config, ["alpha"], erp_schema=True)  # so that db check passes
    engine = sa.create_engine(db_urls.core_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # as coord_0002 left it
        conn.execute(sa.text("DROP TABLE bgw_pause"))
        for name in ("ix_bgw_run_job_started", "ix_bgw_run_tenant_started"):
            conn.execute(
                sa.text(
                    f"DROP INDEX {name}"
                    if db_urls.backend == "sqlite"
                    else f"DROP INDEX {name} ON bgw_run"
                )
            )
        conn.execute(sa.text("UPDATE bgw_schema_version SET version_num = 'coord_0002'"))
    code, out = cli(config, capsys, "db", "upgrade")
    assert code == 0 and "applied coord_0003, coord_0004" in out, out
    inspector = sa.inspect(engine)
    assert inspector.has_table("bgw_pause")
    assert {c["name"] for c in inspector.get_columns("bgw_pause")} == {
        "job",
        "tenant",
        "paused_at",
        "paused_by",
        "reason",
    }
    assert {"ix_bgw_run_job_started", "ix_bgw_run_tenant_started"} <= {
        ix["name"] for ix in inspector.get_indexes("bgw_run")
    }
    engine.dispose()
    assert cli(config, capsys, "db", "check")[0] == 0
    assert cli(config, capsys, "pause", "heartbeat")[0] == 0
    assert {r.tenant for r in _pauses(db_urls.core_url)} == {"*"}


def _pauses(core_url: str) -> list[Any]:
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(own.pause)))
    finally:
        engine.dispose()
