"""bgworkers status as a monitoring check: Nagios exit codes 0/1/2/3 from real run history."""

from __future__ import annotations

import json
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import CliResult, DbUrls, MakeWorld, bgworkers, write_settings

from bgworkers.engine.tenancy import Databases
from bgworkers.schema import core
from bgworkers.schema.own import run
from bgworkers.service import status as status_module
from bgworkers.settings import load_settings

MINUTE = timedelta(minutes=1)
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in run\n'
    "    boom()\nRuntimeError: the tenant database went away\n"
)


def add_runs(
    core_url: str,
    rows: list[tuple[str, str, timedelta] | tuple[str, str, timedelta, str | None]],
    job: str = "heartbeat",
) -> None:
    """(tenant, status, age[, error]) rows of history, inserted in this order (ids grow);
    a run took 2 s, `running` rows have no end."""
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    now = datetime.now(UTC).replace(tzinfo=None)  # history is naive UTC
    with engine.begin() as conn:
        conn.execute(
            run.insert(),
            [
                {
                    "job": job,
                    "tenant": row[0],
                    "tick_at": now - row[2],
                    "run_id": str(uuid.uuid4()),
                    "host": "h",
                    "pid": 1,
                    "started_at": now - row[2],
                    "ended_at": None
                    if row[1] == "running"
                    else now - row[2] + timedelta(seconds=2),
                    "status": row[1],
                    "counters": '{"checks": 1}',
                    "error": row[3] if len(row) > 3 else None,
                }
                for row in rows
            ],
        )
    engine.dispose()


def status(config: Path, *args: str) -> CliResult:
    return bgworkers("status", "--config", str(config), *args)


def status_json(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = status(config, "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def by_tenant(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["tenant"]: p for p in doc["pairs"]}


def rows(stdout: str) -> dict[str, list[str]]:
    """Table rows of the text output by tenant (cells split on 2+ spaces)."""
    table = [
        re.split(r"\s{2,}", line) for line in stdout.splitlines()[2:] if not line.startswith(" ")
    ]
    return {cells[2]: cells for cells in table}


def times_in(doc: Any) -> list[str]:
    """Every string value that looks like a timestamp, anywhere in the document."""
    if isinstance(doc, dict):
        return [t for v in doc.values() for t in times_in(v)]
    if isinstance(doc, list):
        return [t for v in doc for t in times_in(v)]
    return [doc] if isinstance(doc, str) and re.match(r"\d{4}-\d\d-\d\dT", doc) else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def test_ok_after_ok_runs(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["alpha", "beta"])
    add_runs(
        db_urls.core_url,
        [
            ("alpha", "failed", 10 * MINUTE, "old trouble"),
            ("alpha", "ok", MINUTE / 2),
            ("beta", "ok", MINUTE / 4),
        ],
    )
    result = status(config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "BGWORKERS OK - 0 critical, 0 warning, 2 ok (2 job/tenant pairs)"
    alpha = rows(result.stdout)["alpha"]
    assert alpha[:2] == ["OK", "heartbeat"] and alpha[4:6] == ["2.0s", "ok"]
    assert "old trouble" not in result.stdout  # an old failure followed by a success is history

    code, doc = status_json(config)
    assert code == 0 and doc["verdict"] == "OK" and doc["exit_code"] == 0
    assert doc["counts"] == {"critical": 0, "warning": 0, "ok": 2, "paused": 0}
    pair = by_tenant(doc)["alpha"]
    assert pair["last_run"]["outcome"] == "ok" and pair["last_run"]["duration_s"] == 2.0
    assert pair["last_run"]["counters"] == {"checks": 1}
    assert pair["last_failure"]["error"] == "old trouble"
    assert pair["reasons"] == [] and pair["next_tick"] is not None


def test_warning_when_late_or_never_run(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["fresh", "stale", "newcomer", "skipper", "stuck"])
    add_runs(
        db_urls.core_url,
        [
            ("fresh", "running", 50 * MINUTE),  # an orphan from before the last success: not stuck
            ("fresh", "ok", 5 * MINUTE),
            ("fresh", "skipped", 2 * MINUTE),
            ("fresh", "interrupted", MINUTE),
            ("fresh", "ok", MINUTE / 2),
            ("stale", "ok", 10 * MINUTE),
            ("stale", "missed", MINUTE, "fired 70.0s late"),
            ("skipper", "skipped", MINUTE, "lease held by another run"),
            ("stuck", "ok", 1.5 * MINUTE),
            ("stuck", "running", MINUTE),  # limit 30 s + TTL 3 s
        ],
    )
    result = status(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == (
        "BGWORKERS WARNING - 0 critical, 4 warning, 1 ok (5 job/tenant pairs)"
    )
    table = rows(result.stdout)
    assert {t: r[0] for t, r in table.items()} == {
        "fresh": "OK",
        "stale": "WARNING",
        "newcomer": "WARNING",
        "skipper": "WARNING",
        "stuck": "WARNING",
    }
    assert table["stale"][5] == "missed" and table["newcomer"][3] == "never"
    assert re.search(r"late: no success for 9m 5\d+s \(more than 2 intervals, 2m\)", result.stdout)
    assert "    never ran" in result.stdout and "    no successful run yet" in result.stdout

    code, doc = status_json(config)
    assert code == 1 and doc["verdict"] == "WARNING"
    pairs = by_tenant(doc)
    assert pairs["fresh"]["state"] == "OK" and pairs["fresh"]["stuck_run"] is None
    assert pairs["stuck"]["stuck_run"]["outcome"] == "running"
    assert pairs["stuck"]["reasons"][0].startswith("running since ")
    assert pairs["newcomer"]["last_run"] is None and pairs["newcomer"]["last_success"] is None


@pytest.mark.parametrize("outcome", ["partial", "failed", "timed_out", "abandoned"])
def test_critical_for_each_failing_outcome(
    db_urls: DbUrls, tmp_path: Path, outcome: str, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["good", "bad"])
    error = (
        TRACEBACK
        if outcome == "failed"
        else f"{outcome}: 2 of 5 tables failed: node_bottleneck, team_workload\nmore detail"
    )
    shown = (
        "RuntimeError: the tenant database went away"
        if outcome == "failed"
        else f"{outcome}: 2 of 5 tables failed: node_bottleneck, team_workload"
    )
    add_runs(
        db_urls.core_url,
        [
            ("good", "ok", MINUTE / 2),
            ("bad", "ok", 3 * MINUTE),
            ("bad", outcome, MINUTE, error),
            # later non-decisive runs keep the verdict
            ("bad", "skipped", MINUTE / 2),
            ("bad", "missed", MINUTE / 3),
            ("bad", "interrupted", MINUTE / 4),
        ],
    )
    result = status(config)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "BGWORKERS CRITICAL - 1 critical, 0 warning, 1 ok (2 job/tenant pairs)"
    assert rows(result.stdout)["bad"][0] == "CRITICAL"
    assert lines[2].split()[:3] == ["CRITICAL", "heartbeat", "bad"]  # problems first
    assert lines[3].startswith(f"    latest run {outcome} (started ")
    assert lines[3].endswith(f"): {shown}")
    assert "more detail" not in result.stdout and "Traceback" not in result.stdout

    code, doc = status_json(config)
    assert code == 2 and doc["verdict"] == "CRITICAL" and doc["exit_code"] == 2
    bad = by_tenant(doc)["bad"]
    assert bad["state"] == "CRITICAL" and bad["last_failure"]["outcome"] == outcome
    assert bad["last_failure"]["error"] == shown
    assert bad["last_run"]["outcome"] == "interrupted"
    assert any(shown in reason for reason in bad["reasons"])
    stamps = times_in(doc)
    assert len(stamps) >= 8 and all(t.endswith("+00:00") for t in stamps), stamps
    started = datetime.fromisoformat(bad["last_failure"]["started_at"])
    assert abs(datetime.now(UTC) - started - MINUTE) < timedelta(seconds=30)

    add_runs(db_urls.core_url, [("bad", "ok", MINUTE / 5)])  # a success ends it
    assert status(config).returncode == 0


def test_refused_tenant_is_critical_with_its_error(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["good"])
    add_runs(db_urls.core_url, [("good", "ok", MINUTE / 2)])
    engine = sa.create_engine(db_urls.core_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            core.organization.insert().values(id_org=7, code="bad-code", name="x", status="active")
        )
    engine.dispose()
    result = status(config)
    assert result.returncode == 2
    assert rows(result.stdout)["bad-code"][0] == "CRITICAL"
    assert "    tenant refused: tenant code 'bad-code' refused: must match" in result.stdout
    code, doc = status_json(config, "--tenant", "bad-code")
    assert code == 2 and [p["tenant"] for p in doc["pairs"]] == ["bad-code"]
    assert "organization id 7" in doc["pairs"][0]["refused"]


def test_filters(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> None:
    config = heartbeat_settings(
        tmp_path / "s.toml",
        db_urls,
        every="1m",
        extra="""
[jobs.serial_outbox]
enabled = true
every = "5m"
""",
    )
    make_world(config, ["one", "two"])
    add_runs(db_urls.core_url, [("one", "ok", MINUTE / 2), ("two", "failed", MINUTE, "x")])
    add_runs(db_urls.core_url, [("one", "ok", MINUTE), ("two", "ok", MINUTE)], job="serial_outbox")
    code, doc = status_json(config)
    assert code == 2 and len(doc["pairs"]) == 4
    code, doc = status_json(config, "--job", "serial_outbox")
    assert code == 0 and {(p["job"], p["tenant"]) for p in doc["pairs"]} == {
        ("serial_outbox", "one"),
        ("serial_outbox", "two"),
    }
    code, doc = status_json(config, "--tenant", "one")
    assert code == 0 and {p["tenant"] for p in doc["pairs"]} == {"one"}
    code, doc = status_json(config, "--job", "heartbeat", "--tenant", "two")
    assert code == 2 and [(p["job"], p["tenant"]) for p in doc["pairs"]] == [("heartbeat", "two")]

    unknown = status(config, "--tenant", "ONE")  # codes are exact: a case variant is unknown
    assert unknown.returncode == 3
    assert unknown.stdout == (
        "BGWORKERS UNKNOWN - tenant ONE: not in core organization; did you mean 'one'?\n"
    )
    code, doc = status_json(config, "--tenant", "nobody")
    assert code == 3 and doc["verdict"] == "UNKNOWN" and doc["pairs"] == []
    assert doc["error"] == "tenant nobody: not in core organization"

    disabled = status(config, "--job", "dashboard_slow")
    assert disabled.returncode == 3
    assert disabled.stdout.startswith("BGWORKERS UNKNOWN - job dashboard_slow is disabled in ")

    bad_job = status(config, "--job", "nightly")
    assert bad_job.returncode == 3
    assert "invalid choice: 'nightly'" in bad_job.stderr
    assert bad_job.stdout.startswith("BGWORKERS UNKNOWN - ")
    assert "serial_consistency" in bad_job.stdout and "heartbeat" in bad_job.stdout


def test_unknown_when_core_database_is_unreachable(tmp_path: Path) -> None:
    pytest.importorskip("MySQLdb")
    port = free_port()
    cases = {
        f"mysql+mysqldb://bgw:secret@127.0.0.1:{port}/erp_core": (
            f"core database mysql+mysqldb://bgw:***@127.0.0.1:{port}/erp_core unreachable: "
        ),
        f"sqlite:///{tmp_path}/missing/dir/core.db": (
            f"core database sqlite:///{tmp_path}/missing/dir/core.db unreachable: "
            "unable to open database file"
        ),
    }
    for url, says in cases.items():
        config = write_settings(
            tmp_path / "s.toml",
            DbUrls("x", url, url + "_{code_lower}"),
            "[jobs.heartbeat]\nenabled = true\n",
        )
        result = status(config)
        assert result.returncode == 3, result.stdout + result.stderr
        assert result.stdout.startswith(f"BGWORKERS UNKNOWN - {says}"), result.stdout
        assert result.stdout.count("\n") == 1 and "secret" not in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        code, doc = status_json(config)
        assert code == 3 and doc["exit_code"] == 3 and doc["verdict"] == "UNKNOWN"
        assert doc["error"].startswith(says) and doc["checked_at"].endswith("+00:00")


def test_unknown_when_run_history_is_unreachable(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["one"])
    elsewhere = f"sqlite:///{tmp_path}/missing/coord.db"
    config.write_text(
        config.read_text().replace(
            "[database]\n", f'[database]\ncoordination_url = "{elsewhere}"\n'
        )
    )
    result = status(config)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == (
        f"BGWORKERS UNKNOWN - coordination database {elsewhere} "
        "unreachable (run history): unable to open database file\n"
    )


@pytest.mark.parametrize(
    "content, says",
    [
        ("[jobs.heartbeat]\nevery = 'soon'\n", "jobs.heartbeat.every: "),
        ("[database\n", "invalid TOML: "),
        (None, "file not found"),
    ],
)
def test_unknown_with_bad_settings_but_other_commands_keep_exit_2(
    tmp_path: Path, content: str | None, says: str
) -> None:
    config = tmp_path / "settings.toml"
    if content is not None:
        config.write_text(content)
    result = status(config)
    assert result.returncode == 3
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"BGWORKERS UNKNOWN - invalid settings: {config}: ") and says in first
    assert "Traceback" not in result.stdout + result.stderr
    code, doc = status_json(config)
    assert code == 3 and doc["verdict"] == "UNKNOWN" and says in doc["error"]
    jobs = bgworkers("jobs", "--config", str(config))
    assert jobs.returncode == 2 and says in jobs.stderr


def test_a_partial_run_is_critical_and_bad_usage_unknown(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["one"])
    add_runs(db_urls.core_url, [("one", "partial", MINUTE / 2, "1 of 3 tables failed")])
    result = status(config)
    assert result.returncode == 2
    assert result.stdout.startswith(
        "BGWORKERS CRITICAL - 1 critical, 0 warning, 0 ok (1 job/tenant pair)\n"
    )
    assert "): 1 of 3 tables failed\n" in result.stdout
    bogus = bgworkers("--config", str(config), "status", "--bogus")
    assert bogus.returncode == 3 and bogus.stdout.startswith("BGWORKERS UNKNOWN - ")


def test_a_few_indexed_queries_whatever_the_history_size(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    """The statements status runs do not grow with the history, and read it by index."""
    config = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(config, ["one", "two"])
    settings = load_settings(config)

    def statements() -> list[tuple[str, Any]]:
        seen: list[tuple[str, Any]] = []
        dbs = Databases(settings)
        sa.event.listen(
            dbs.coordination,
            "before_cursor_execute",
            lambda _c, _cur, sql, params, *_: seen.append((sql, params)),
        )
        try:
            result = status_module.check(settings, dbs, datetime.now(UTC))
        finally:
            dbs.dispose()
        assert {p.state for p in result.pairs} == {"OK"}
        return [(sql, params) for sql, params in seen if "bgw_run" in sql]

    add_runs(db_urls.core_url, [("one", "ok", MINUTE / 2), ("two", "ok", MINUTE / 2)])
    small = statements()
    add_runs(
        db_urls.core_url,
        [
            (t, s, timedelta(hours=2, seconds=3 * i + k))
            for i in range(500)
            for t in ("one", "two")
            for k, s in enumerate(("ok", "failed", "missed"))
        ],
    )
    add_runs(db_urls.core_url, [("one", "ok", MINUTE / 4), ("two", "ok", MINUTE / 4)])
    large = statements()
    assert len(small) == len(large) == 2, large
    newest_per_status, params = large[0]
    engine = sa.create_engine(db_urls.core_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        if db_urls.backend == "sqlite":
            plan = [
                r[3]
                for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + newest_per_status, params)
                if "bgw_run" in r[3]
            ]
            assert len(plan) == 9 and all(
                "USING COVERING INDEX ix_bgw_run_job_tenant_status" in step for step in plan
            )
        else:
            conn.exec_driver_sql("ANALYZE TABLE bgw_run").all()
            plan = [
                r._mapping for r in conn.exec_driver_sql("EXPLAIN " + newest_per_status, params)
            ]
            assert len(plan) == 9 and all(  # a loose index scan: one step per (job, tenant)
                step["key"] == "ix_bgw_run_job_tenant_status"
                and "Using index for group-by" in step["Extra"]
                for step in plan
            ), plan
    engine.dispose()
