"""`bgworkers history` on SQLite and MariaDB: filters, order, limits, JSON, exit statuses."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import DbUrls, MakeWorld, bgworkers, write_settings

from bgworkers.schema.own import run

H = timedelta(hours=1)
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in run\n'
    "    boom()\nRuntimeError: the tenant database went away\n"
)


def add(
    core_url: str, now: datetime, rows: list[tuple[str, str, str, timedelta, str | None]]
) -> None:
    """(job, tenant, status, age, error); inserted in an order unlike their times, so
    that order by id would not give newest first."""
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            run.insert(),
            [
                {
                    "job": job,
                    "tenant": tenant,
                    "tick_at": now - age,
                    "run_id": str(uuid.uuid4()),
                    "host": "node-a",
                    "pid": 7,
                    "started_at": now - age,
                    "ended_at": None if status == "running" else now - age + timedelta(seconds=3),
                    "status": status,
                    "counters": json.dumps({"checks": 2, "errors": 0}),
                    "error": error,
                }
                for job, tenant, status, age, error in rows
            ],
        )
    engine.dispose()


@pytest.fixture
def now() -> datetime:
    """Naive UTC, as history stores it; the runs are this much old."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path, now: datetime, make_world: MakeWorld) -> Path:
    path = heartbeat_settings(tmp_path / "s.toml", db_urls, every="1m")
    make_world(path, ["alpha", "beta"])
    add(
        db_urls.core_url,
        now,
        [
            ("heartbeat", "alpha", "ok", 5 * H, None),
            ("heartbeat", "beta", "failed", 1 * H, TRACEBACK),
            ("serial_outbox", "alpha", "partial", 3 * H, "1 outbox batch left pending\ndetail"),
            ("heartbeat", "alpha", "skipped", 2 * H, "lease held by another run"),
            ("heartbeat", "alpha", "running", 0.5 * H, None),
            ("serial_outbox", "beta", "ok", 30 * H, None),
        ],
    )
    return path


def history(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    done = bgworkers("history", "--config", str(config), *args)
    return done.returncode, done.stdout


def history_json(
    config: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, object]]:
    code, out = history(config, capsys, "--json", *args)
    assert code == 0, out
    runs: list[dict[str, object]] = json.loads(out)["runs"]
    return runs


def keys(runs: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(r["job"], r["tenant"], r["status"]) for r in runs]


def test_newest_first_with_each_filter(
    config: Path, now: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keys(history_json(config, capsys)) == [
        ("heartbeat", "alpha", "running"),
        ("heartbeat", "beta", "failed"),
        ("heartbeat", "alpha", "skipped"),
        ("serial_outbox", "alpha", "partial"),
        ("heartbeat", "alpha", "ok"),
        ("serial_outbox", "beta", "ok"),
    ]
    assert keys(history_json(config, capsys, "serial_outbox")) == [
        ("serial_outbox", "alpha", "partial"),
        ("serial_outbox", "beta", "ok"),
    ]
    assert keys(history_json(config, capsys, "heartbeat", "--tenant", "alpha")) == [
        ("heartbeat", "alpha", "running"),
        ("heartbeat", "alpha", "skipped"),
        ("heartbeat", "alpha", "ok"),
    ]
    assert keys(history_json(config, capsys, "--status", "failed,partial")) == [
        ("heartbeat", "beta", "failed"),
        ("serial_outbox", "alpha", "partial"),
    ]
    assert keys(
        history_json(config, capsys, "--status", "ok", "--status", "skipped", "--tenant", "alpha")
    ) == [("heartbeat", "alpha", "skipped"), ("heartbeat", "alpha", "ok")]
    assert keys(history_json(config, capsys, "--since", "2h30m")) == [
        ("heartbeat", "alpha", "running"),
        ("heartbeat", "beta", "failed"),
        ("heartbeat", "alpha", "skipped"),
    ]
    since = (now - 4 * H).replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Bangkok")).isoformat()
    assert len(history_json(config, capsys, "--since", since)) == 4  # an offset is honoured
    naive = (now - 4 * H).isoformat()  # no offset: UTC
    assert len(history_json(config, capsys, "--since", naive)) == 4
    assert history_json(config, capsys, "--tenant", "nobody") == []


def test_json_times_carry_their_zone_and_errors_their_headline(
    config: Path, now: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = history_json(config, capsys, "heartbeat", "--tenant", "beta")
    assert len(runs) == 1
    failed = runs[0]
    assert failed["started_at"] == (now - H).replace(tzinfo=UTC).isoformat()
    assert str(failed["tick_at"]).endswith("+00:00") and str(failed["ended_at"]).endswith("+00:00")
    assert failed["duration_s"] == 3.0 and failed["host"] == "node-a"
    assert failed["counters"] == {"checks": 2, "errors": 0}
    assert failed["error"] == "RuntimeError: the tenant database went away"
    running = history_json(config, capsys, "--status", "running")[0]
    assert running["ended_at"] is None and running["duration_s"] is None


def test_text_lists_tick_start_duration_outcome_host_counters_and_error(
    config: Path, now: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = history(config, capsys, "--limit", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "TICK",
        "(UTC)",
        "STARTED",
        "(UTC)",
        "TOOK",
        "OUTCOME",
        "JOB",
        "TENANT",
        "HOST",
        "COUNTERS",
        "ERROR",
    ]
    assert len(lines) == 5  # header, 3 runs, the note that there are more
    started = (now - H).strftime("%Y-%m-%d %H:%M:%S")
    failed = lines[2]
    assert failed.startswith(f"{started}  {started}  3.0s  failed   heartbeat  beta")
    assert "node-a" in failed and "checks=2" in failed and "errors=0" not in failed
    assert failed.endswith("RuntimeError: the tenant database went away")
    assert " - " in lines[1] and "running" in lines[1]  # no duration yet
    assert lines[-1].startswith("(the newest 3 shown; older runs match too")
    code, out = history(config, capsys, "serial_outbox", "--tenant", "alpha")
    assert code == 0 and out.splitlines()[1].endswith("1 outbox batch left pending")
    assert "older runs match" not in out
    code, out = history(config, capsys, "--status", "abandoned")
    assert (code, out) == (0, "no runs match\n")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--status", "broken"],
            "invalid status 'broken'; valid: running, ok, partial, failed, "
            "timed_out, interrupted, abandoned, skipped, missed",
        ),
        (["--status", "ok,nope"], "invalid status 'nope'"),
        (["--since", "yesterday"], "'yesterday' is neither an ISO time"),
        (["--limit", "0"], "must be 1 to 10000"),
        (["nightly"], "invalid choice: 'nightly'"),
    ],
)
def test_bad_usage_exits_2_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    config = tmp_path / "s.toml"
    config.write_text("")
    done = bgworkers("history", "--config", str(config), *args)
    assert done.returncode == 2 and says in done.stderr


def test_unreadable_history_exits_3(
    db_urls: DbUrls, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_settings(tmp_path / "s.toml", db_urls)  # a core database with no tables
    if db_urls.backend == "sqlite":
        (tmp_path / "core.db").touch()
    done = bgworkers("history", "--config", str(config))
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.startswith("bgworkers history: cannot read run history from ")
    assert "bgw_run" in done.stderr
