"""`bgworkers quarantine list|resolve` on SQLite and MariaDB."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import DbUrls, MakeWorld, bgworkers

from bgworkers.schema.tenant import serial_quarantine as quarantine

DETECTED = datetime(2026, 11, 20, 8, 0, 0)
RESOLVED = datetime(2026, 11, 21, 9, 30, 0)


def rows_of(url: str) -> dict[int, Any]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {r.id: r for r in conn.execute(sa.select(quarantine))}
    finally:
        engine.dispose()


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld) -> Path:
    path = heartbeat_settings(tmp_path / "s.toml", db_urls)
    make_world(path, ["alpha", "beta", "gamma"], erp_schema=True)
    rows = {
        "alpha": [
            (1, "SER-A1", "duplicate", "flow_token", 11, None),
            (2, "SER-A2", "orphaned", "job_ticket_serial", 12, None),
            (3, "SER-A3", "duplicate", "flow_token", 13, RESOLVED),
        ],
        "beta": [(1, "SER-B1\x07bell", "invalid_format", "flow_token", None, None)],
        "gamma": [(1, "SER-G1", "orphaned", "job_ticket_serial", 31, RESOLVED)],
    }
    for code, tenant_rows in rows.items():
        engine = sa.create_engine(db_urls.tenant(code), poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.execute(
                quarantine.insert(),
                [
                    {
                        "id": i,
                        "serial_code": serial,
                        "reason": reason,
                        "source_table": table,
                        "source_id": source,
                        "detected_at": DETECTED,
                        "resolved_at": resolved,
                    }
                    for i, serial, reason, table, source, resolved in tenant_rows
                ],
            )
        engine.dispose()
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    done = bgworkers("quarantine", *args, "--config", str(config))
    return done.returncode, done.stdout


def listed(
    config: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> dict[str, list[tuple[int, str]]]:
    code, out = run(config, capsys, "list", "--json", *args)
    assert code == 0, out
    doc = json.loads(out)
    return {t: [(r["id"], r["serial_code"]) for r in v["rows"]] for t, v in doc["tenants"].items()}


def test_list_open_rows_per_tenant_then_filters(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert listed(config, capsys) == {
        "alpha": [(2, "SER-A2"), (1, "SER-A1")],
        "beta": [(1, "SER-B1\x07bell")],
        "gamma": [],
    }
    assert listed(config, capsys, "--all") == {
        "alpha": [(3, "SER-A3"), (2, "SER-A2"), (1, "SER-A1")],
        "beta": [(1, "SER-B1\x07bell")],
        "gamma": [(1, "SER-G1")],
    }
    assert listed(config, capsys, "--tenant", "alpha", "--reason", "duplicate") == {
        "alpha": [(1, "SER-A1")]
    }
    assert listed(config, capsys, "--tenant", "alpha", "--reason", "duplicate", "--all") == {
        "alpha": [(3, "SER-A3"), (1, "SER-A1")]
    }

    code, out = run(config, capsys, "list", "--json", "--tenant", "alpha", "--all")
    assert code == 0
    row = json.loads(out)["tenants"]["alpha"]["rows"][0]
    assert row == {
        "id": 3,
        "serial_code": "SER-A3",
        "reason": "duplicate",
        "source_table": "flow_token",
        "source_id": 13,
        "detected_at": "2026-11-20T08:00:00+00:00",
        "resolved_at": "2026-11-21T09:30:00+00:00",
    }


def test_list_text_names_each_row_and_escapes_serials(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(config, capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "tenant alpha: 2 open rows"
    assert lines[1].split() == ["ID", "SERIAL", "REASON", "SOURCE", "DETECTED", "(UTC)"]
    assert lines[2].split() == [
        "2",
        "SER-A2",
        "orphaned",
        "job_ticket_serial#12",
        "2026-11-20",
        "08:00:00",
    ]
    assert "tenant beta: 1 open row" in lines
    assert any(
        line.split()[:4] == ["1", "SER-B1\\x07bell", "invalid_format", "flow_token#-"]
        for line in lines
    )
    assert lines[-1] == "tenant gamma: 0 open rows"
    code, out = run(config, capsys, "list", "--tenant", "alpha", "--limit", "1")
    assert code == 0 and out.splitlines()[0] == "tenant alpha: 2 open rows (the newest 1 shown)"


def test_list_or_resolve_of_an_unknown_tenant_is_bad_usage(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, capsys, "list", "--tenant", "ALPHA") == (
        2,
        "tenant ALPHA: not in core organization; did you mean 'alpha'?\n",
    )
    assert run(config, capsys, "resolve", "--tenant", "nobody", "1") == (
        2,
        "tenant nobody: not in core organization\n",
    )
    done = bgworkers("quarantine", "list", "--reason", "cosmic_rays", "--config", str(config))
    assert done.returncode == 2 and "invalid choice: 'cosmic_rays'" in done.stderr


def test_resolve_sets_resolved_at_only_on_open_rows_and_names_the_rest(
    db_urls: DbUrls, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(config, capsys, "resolve", "--tenant", "alpha", "2", "3", "99", "1")
    assert code == 1
    assert out.splitlines() == [
        "tenant alpha: resolved 2 row(s): ids 1, 2",
        "tenant alpha: id 3: already resolved at 2026-11-21 09:30:00 UTC (left alone)",
        "tenant alpha: id 99: no such quarantine row",
    ]
    after = rows_of(db_urls.tenant("alpha"))
    assert after[1].resolved_at is not None and after[2].resolved_at is not None
    assert after[3].resolved_at == RESOLVED  # the guard: an earlier resolution stands
    utc_now = datetime.now(UTC).replace(tzinfo=None)
    assert abs((after[1].resolved_at - utc_now).total_seconds()) < 120
    assert rows_of(db_urls.tenant("beta"))[1].resolved_at is None  # other tenants untouched

    first = after[1].resolved_at
    code, out = run(config, capsys, "resolve", "--tenant", "alpha", "1")
    assert code == 1 and out == (
        f"tenant alpha: id 1: already resolved at {first:%Y-%m-%d %H:%M:%S} UTC (left alone)\n"
    )
    assert rows_of(db_urls.tenant("alpha"))[1].resolved_at == first

    assert run(config, capsys, "resolve", "--tenant", "beta", "1") == (
        0,
        "tenant beta: resolved 1 row(s): ids 1\n",
    )
    assert listed(config, capsys, "--tenant", "beta") == {"beta": []}
