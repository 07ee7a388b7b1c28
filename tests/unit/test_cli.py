"""The command line: help everywhere, clear errors, exit statuses.

Commands run in this process (`bgworkers.cli.main`); two smoke tests run the entry
point as the shell does, a process whose exit status is the command's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from helpers import CliResult, DbUrls, MakeWorld, write_settings
from helpers import bgworkers as cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    [],
    ["run"],
    ["run-once"],
    ["jobs"],
    ["status"],
    ["explain"],
    ["check-config"],
    ["outbox"],
    ["outbox", "stats"],
    ["outbox", "requeue"],
    ["db"],
    ["db", "init"],
    ["db", "upgrade"],
    ["db", "check"],
    ["demo-data"],
    ["history"],
    ["quarantine"],
    ["quarantine", "list"],
    ["quarantine", "resolve"],
    ["pause"],
    ["resume"],
]


def bgworkers(*args: str, cwd: Path = ROOT) -> CliResult:
    return cli(*args, cwd=cwd)


def process(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m bgworkers ARGS` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "bgworkers", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_entry_point_as_a_process_prints_help_and_exits_0() -> None:
    result = process("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bgworkers")


def test_the_entry_point_as_a_process_exits_with_the_run_once_status(
    tmp_path: Path, make_world: MakeWorld
) -> None:
    urls = DbUrls(
        "sqlite", f"sqlite:///{tmp_path}/core.db", f"sqlite:///{tmp_path}/tenant_{{code_lower}}.db"
    )
    config = write_settings(
        tmp_path / "settings.toml",
        urls,
        """
[jobs.heartbeat]
enabled = true
[tenants.urls]
broken = "sqlite:////nonexistent-dir/broken.db"
""",
    )
    world = make_world(config, ["DEFAULT"])
    ok = process("run-once", "heartbeat", "--json", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == {"tenants": 1, "checks": 1, "errors": 0}
    with world.dbs.core.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO organization (id_org, code, name, status) "
            "VALUES (9, 'broken', 'Broken', 'active')"
        )
    failed = process("run-once", "heartbeat", "--json", "--config", str(config))
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["total"]["errors"] == 1


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bgworkers")
def test_help_on_every_command(command: list[str]) -> None:
    result = bgworkers(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: bgworkers")


def table(stdout: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def test_jobs_lists_every_job_with_trigger_and_lease_group() -> None:
    result = bgworkers("jobs", "--config", str(ROOT / "settings.toml"))
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == ["JOB", "ENABLED", "TRIGGER", "LEASE GROUP", "NEXT RUN (UTC)", "PAUSED"]
    jobs = rows[1:7]
    assert [(r[0], r[2], r[3]) for r in jobs] == [
        ("serial_consistency", "every 1h", "serials"),
        ("serial_outbox", "every 5m", "serials"),
        ("dashboard_fast", "every 1m", "dashboard_fast"),
        ("dashboard_medium", "every 5m", "dashboard_medium"),
        ("dashboard_slow", "every 15m", "dashboard_slow"),
        ("heartbeat", "every 1m", "heartbeat"),
    ]
    assert jobs[-1][1] == "no" and jobs[-1][4] == "-"  # heartbeat is off by default
    # pauses live in the coordination database; none here (no demo data in a clean tree)
    assert all(r[5] in ("-", "?") for r in jobs)
    if jobs[0][5] == "?":
        assert rows[7][0].startswith("(PAUSED unknown: ")


def test_jobs_with_other_config_previews_the_reload(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[jobs.heartbeat]\nenabled = true\n")
    other = tmp_path / "other.toml"
    other.write_text(
        "[jobs.heartbeat]\nenabled = true\ncron = '*/10 * * * 1-5'\n[logging]\nlevel = 'debug'\n"
    )
    result = bgworkers("jobs", "--config", str(other), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    heartbeat = table(result.stdout)[6]
    assert heartbeat[:3] == ["heartbeat", "yes", "cron '*/10 * * * 1-5'"]
    fire = datetime.strptime(heartbeat[4], "%Y-%m-%d %H:%M:%S")
    assert fire.minute % 10 == 0 and fire.weekday() < 5
    assert result.stdout.endswith(
        f"A reload from settings.toml to {other} would:\n"
        "  reschedule: heartbeat\n  apply changed settings: logging, jobs\n"
    )


def test_unknown_job_is_a_usage_error() -> None:
    result = bgworkers("run-once", "nightly_report")
    assert result.returncode == 2
    assert "invalid choice: 'nightly_report'" in result.stderr


def test_bad_option_values_are_usage_errors() -> None:
    result = bgworkers("demo-data", "--tenants", "0")
    assert result.returncode == 2 and "--tenants: must be 1 or more" in result.stderr


def test_missing_settings_file_names_it(tmp_path: Path) -> None:
    result = bgworkers("jobs", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "settings.toml: file not found"


@pytest.mark.parametrize("before", [True, False], ids=["before command", "after command"])
def test_config_option_before_or_after_the_command(tmp_path: Path, before: bool) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[logging]\nlevel = 'loud'\n")
    args = (
        ["--config", str(path), "db", "check"] if before else ["db", "check", "--config", str(path)]
    )
    result = bgworkers(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: logging.level:")
