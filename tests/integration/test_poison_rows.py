"""Poison rows, on SQLite and MariaDB: skipped and named, never fatal to their tenant.

One tenant holds ordinary anomalies (a missing tenant link, a missing core link,
invalid formats, an orphan) beside rows the jobs cannot read or use: zero and
year-1 dates, control characters, undecodable bytes, a serial too long for
serial_quarantine.serial_code, and hostile but legal values (empty, emoji,
SQL-looking, blanks) that are ordinary data.  Each poison row must be named in
a `bad_row` event and counted in `bad_rows`; everything else is done in the same
run; a second run changes nothing.

MariaDB: zero dates are written with a relaxed `sql_mode`, as a lax install
has them.  Bytes that are not UTF-8 cannot be stored in a utf8mb4 column (strict
mode refuses them, a relaxed one turns them into '?'), so the undecodable rows
exist on SQLite only; control characters, NUL included, MariaDB holds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import DbUrls, build_world, write_settings
from jobs_helpers import std, table_digest

from bgworkers.demo.harness import make_context
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.logs import configure_logging
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs.outbox import job as serial_outbox
from bgworkers.jobs.outbox import store as outbox_store
from bgworkers.jobs.serials import consistency as serial_consistency
from bgworkers.jobs.serials import explain_text
from bgworkers.schema import core, tenant
from bgworkers.settings import LoggingSettings, Settings

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
UTC_NOW = NOW.replace(tzinfo=None)
ERP_NOW = UTC_NOW + timedelta(hours=7)  # Asia/Bangkok
RECENT = UTC_NOW - timedelta(days=1)
ZERO_DATE, YEAR_ONE = "0000-00-00 00:00:00", "0001-01-01 00:00:00"
UNDECODABLE = "X'424C56522D42FF'"  # SQL blob literal: 'BLVR-B', then a lone 0xFF byte

S = {
    name: std(seq)
    for seq, name in enumerate(
        ("link", "core", "tz_zero", "tz_one", "orph", "gen_zero", "gen_text", "fresh"), start=1
    )
}
LONG = "L" * 80  # fits flow_token (100) and job_ticket_serial, not the ERP's quarantine (64)
HOSTILE = {  # id_token -> legal data, classified invalid_format and quarantined
    12: "hello world",
    13: "",
    14: "\U0001f600\U0001f9f5 BAG",
    15: "'; DROP TABLE serial_quarantine; --",
    16: "  BLVR  X  ",
}
# id_token -> (status, serial); all piece tokens
TOKENS: dict[int, tuple[str, str]] = {
    10: ("active", S["link"]),  # job-ticket serial 1 is not linked to it: missing tenant link
    11: ("active", S["core"]),  # registry not linked: missing core link
    **{tid: ("active", serial) for tid, serial in HOSTILE.items()},
    17: ("active", LONG),  # invalid format, too long to quarantine: bad row
    18: ("waiting", "BLVR\x00NUL"),  # control characters: bad rows
    19: ("paused", "BLVR\tTAB"),
    21: ("active", S["tz_zero"]),  # spawned_at zero date: its tenant link is a bad row
    22: ("active", S["tz_one"]),  # spawned_at year 1 (overflows in UTC): bad row
    30: ("completed", "garbage"),  # not live: never checked
}
# id_serial -> (id_job_ticket, serial); generated RECENT, none linked
JTS: dict[int, tuple[int, str]] = {
    1: (1, S["link"]),  # missing tenant link -> token 10
    2: (1, S["tz_zero"]),  # -> token 21, whose spawned_at is zero: bad row flow_token 21
    3: (1, S["tz_one"]),  # -> token 22: bad row flow_token 22
    4: (2, S["orph"]),  # ticket completed: orphaned
    5: (1, S["gen_zero"]),  # generated_at zero, ticket running: bad row
    6: (1, S["gen_text"]),  # generated_at not a date: bad row
    7: (2, "O" * 80),  # orphaned but too long to quarantine: bad row
    8: (2, "BLVR\x01SOH"),  # control character: bad row
    9: (1, S["fresh"]),  # young, ticket running: nothing to do
}
BAD_DATES = {5: ZERO_DATE, 6: "not a date"}  # job_ticket_serial.generated_at
BAD_SPAWNED = {21: ZERO_DATE, 22: YEAR_ONE}  # flow_token.spawned_at
# (table, id) -> a word of the problem named in the `bad_row` event
BAD_ROWS = {
    ("flow_token", 17): "longer than serial_quarantine.serial_code holds (64)",
    ("flow_token", 18): "U+0000",
    ("flow_token", 19): "U+0009",
    ("flow_token", 21): "spawned_at",
    ("flow_token", 22): "spawned_at",
    ("job_ticket_serial", 5): "generated_at",
    ("job_ticket_serial", 6): "generated_at",
    ("job_ticket_serial", 7): "longer than serial_quarantine.serial_code holds (64)",
    ("job_ticket_serial", 8): "U+0001",
}
SQLITE_ONLY_BAD_ROWS = {("flow_token", 20): "not valid UTF-8"}
EXPECTED = {
    "missing_tenant_links": 1,
    "missing_core_links": 1,
    "invalid_formats": len(HOSTILE),
    "orphaned": 1,
    "duplicates": 0,
    "mismatches": 0,
    "unregistered": 0,
    "legacy": 0,
    "fixed": 2,
    "quarantined": len(HOSTILE) + 1,
    "bad_rows": len(BAD_ROWS),
    "errors": 0,
}
EXPECTED_QUARANTINE = {
    *((serial, "invalid_format", "flow_token", tid) for tid, serial in HOSTILE.items()),
    (S["orph"], "orphaned", "job_ticket_serial", 4),
}


@dataclasses.dataclass
class Env:
    settings: Settings
    dbs: Databases
    backend: str

    @property
    def db(self) -> sa.Engine:
        return self.dbs.tenant("DEFAULT")

    def digest(self) -> dict[str, str]:
        return table_digest({"core": self.dbs.core, "DEFAULT": self.db})

    def run(self, job: str, dry_run: bool = False) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The job's counters and the events it logged."""
        buf = io.StringIO()
        configure_logging(LoggingSettings(format="json"), (), buf)
        ctx = make_context(self.settings, self.dbs, "DEFAULT", NOW, job, dry_run=dry_run)
        module = serial_consistency if job == "serial_consistency" else serial_outbox
        counters = module.run(ctx)
        return counters, [json.loads(line) for line in buf.getvalue().splitlines()]

    def rows(self, table: sa.Table) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.select(table)).all())


@pytest.fixture
def env(db_urls: DbUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = write_settings(
        tmp_path / "settings.toml", db_urls, "[jobs.serial_consistency]\nchunk_size = 3\n"
    )
    world = build_world(
        path,
        [
            {
                "id_org": 1,
                "code": "DEFAULT",
                "name": "Bellavier Atelier",
                "status": "active",
                "org_serial_code": "BLVR",
            }
        ],
        erp_schema=True,
    )
    try:
        yield Env(world.settings, world.dbs, db_urls.backend)
    finally:
        world.dbs.dispose()


def relaxed(conn: sa.Connection) -> None:
    """MariaDB: accept zero dates and coercions, like an install with a lax sql_mode."""
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text("SET SESSION sql_mode = ''"))


def like_erp_install(engine: sa.Engine, table: str, columns: dict[str, str]) -> None:
    """Give `columns` of the (still empty) `table` another definition, as a variant install
    has them.  SQLite cannot alter a column: the table is rebuilt from its own DDL."""
    with engine.begin() as conn:
        if conn.dialect.name != "sqlite":
            for name, definition in columns.items():
                conn.execute(sa.text(f"ALTER TABLE {table} MODIFY {name} {definition}"))
            return
        ddl = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
            {"t": table},
        ).scalar_one()
        indexes = (
            conn.execute(
                sa.text(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = :t AND sql IS NOT NULL"
                ),
                {"t": table},
            )
            .scalars()
            .all()
        )
        for name, definition in columns.items():
            ddl, n = re.subn(rf"\b{name} [^,]+,", f"{name} {definition},", ddl)
            assert n == 1, ddl
        conn.execute(sa.text(f"DROP TABLE {table}"))
        conn.execute(sa.text(ddl))
        for index in indexes:
            conn.execute(sa.text(index))


def populate_check(env: Env) -> None:
    registry = {S["link"]: 10, S["core"]: None, S["tz_zero"]: 21, S["tz_one"]: 22}
    with env.dbs.core.begin() as conn:
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": serial,
                    "tenant_id": 1,
                    "org_code": "BLVR",
                    "production_type": "hatthasilpa",
                    "sku": "BAG01",
                    "job_ticket_id": 1,
                    "dag_token_id": token,
                    "checksum": serial[-1],
                    "created_at": RECENT,
                }
                for serial, token in registry.items()
            ],
        )
    # the ERP's own serial_quarantine.serial_code is VARCHAR(64)
    like_erp_install(env.db, "serial_quarantine", {"serial_code": "VARCHAR(64) NOT NULL"})
    with env.db.begin() as conn:
        conn.execute(
            sa.insert(tenant.job_ticket),
            [
                {
                    "id_job_ticket": i,
                    "ticket_code": f"JT-{i}",
                    "status": status,
                    "production_type": "hatthasilpa",
                }
                for i, status in ((1, "in_progress"), (2, "completed"))
            ],
        )
        conn.execute(
            sa.insert(tenant.flow_token),
            [
                {
                    "id_token": tid,
                    "id_instance": 1,
                    "token_type": "piece",
                    "status": status,
                    "serial_number": serial,
                    "spawned_at": ERP_NOW - timedelta(hours=tid),
                }
                for tid, (status, serial) in TOKENS.items()
            ],
        )
        conn.execute(
            sa.insert(tenant.job_ticket_serial),
            [
                {
                    "id_serial": sid,
                    "id_job_ticket": ticket,
                    "serial_number": serial,
                    "sequence_no": sid,
                    "generated_at": RECENT,
                }
                for sid, (ticket, serial) in JTS.items()
            ],
        )
        relaxed(conn)
        for sid, value in BAD_DATES.items():
            conn.execute(
                sa.text("UPDATE job_ticket_serial SET generated_at = :v WHERE id_serial = :id"),
                {"v": value, "id": sid},
            )
        for tid, value in BAD_SPAWNED.items():
            conn.execute(
                sa.text("UPDATE flow_token SET spawned_at = :v WHERE id_token = :id"),
                {"v": value, "id": tid},
            )
        if env.backend == "sqlite":
            conn.execute(
                sa.text(
                    "INSERT INTO flow_token (id_token, id_instance, token_type, status, "
                    f"serial_number, spawned_at) VALUES (20, 1, 'piece', 'active', "
                    f"CAST({UNDECODABLE} AS TEXT), '2025-11-20 10:00:00.000000')"
                )
            )


def bad_row_events(events: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    return {(e["table"], e["id"]): e["problem"] for e in events if e["event"] == "bad_row"}


def open_quarantine(env: Env) -> set[tuple[str, str, str, int]]:
    return {
        (r.serial_code, r.reason, r.source_table, r.source_id)
        for r in env.rows(tenant.serial_quarantine)
        if r.resolved_at is None
    }


def test_serial_check_names_poison_rows_and_does_the_rest(env: Env) -> None:
    populate_check(env)
    bad = {**BAD_ROWS, **(SQLITE_ONLY_BAD_ROWS if env.backend == "sqlite" else {})}
    expected = {**EXPECTED, "bad_rows": len(bad)}
    pristine = env.digest()

    dry, events = env.run("serial_consistency", dry_run=True)
    assert dry == expected  # a dry run counts bad rows the same ...
    assert bad_row_events(events).keys() == bad.keys()
    assert env.digest() == pristine  # ... and writes nothing

    first, events = env.run("serial_consistency")
    assert first == expected
    named = bad_row_events(events)
    assert named.keys() == bad.keys()
    for key, word in bad.items():
        assert word in named[key], (key, named[key])
    assert all(e["level"] == "warning" for e in events if e["event"] == "bad_row")
    # the ordinary anomalies of the tenant are fixed and quarantined in the same run
    assert open_quarantine(env) == EXPECTED_QUARANTINE
    jts = tenant.job_ticket_serial
    with env.db.connect() as conn:  # not generated_at: the test cannot read a zero date either
        links = {
            r.id_serial: r
            for r in conn.execute(
                sa.select(jts.c.id_serial, jts.c.spawned_token_id, jts.c.spawned_at)
            )
        }
    assert (links[1].spawned_token_id, links[1].spawned_at) == (10, UTC_NOW - timedelta(hours=10))
    assert all(links[i].spawned_token_id is None for i in JTS if i != 1)
    outbox = [
        (r.serial_code, r.dag_token_id, r.status) for r in env.rows(tenant.serial_link_outbox)
    ]
    assert outbox == [(S["core"], 11, "pending")]
    with env.db.connect() as conn:  # the SQL-looking value dropped nothing
        assert conn.execute(
            sa.select(sa.func.count()).select_from(tenant.serial_quarantine)
        ).scalar_one() == len(EXPECTED_QUARANTINE)

    after_first = env.digest()
    second, events = env.run("serial_consistency")
    assert second == {**expected, "missing_tenant_links": 0, "fixed": 0, "quarantined": 0}
    assert bad_row_events(events).keys() == bad.keys()  # named again, not written
    assert env.digest() == after_first


# ---------------------------------------------------------------- outbox

OUT = tenant.serial_link_outbox
A, B, C = std(30), std(31), std(32)
WITH_NUL = C + "\x00TAIL"  # SQLite's ->> reads it as C


def populate_outbox(env: Env) -> dict[str, int]:
    """Due rows, oldest first: the poison rows, then two rows that can be linked."""
    with env.dbs.core.begin() as conn:
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": serial,
                    "tenant_id": 1,
                    "org_code": "BLVR",
                    "production_type": "hatthasilpa",
                    "dag_token_id": None,
                    "created_at": RECENT,
                }
                for serial in (A, B, C)
            ],
        )
    # a variant install without NOT NULL on the outbox columns (the ERP DDL has it)
    like_erp_install(
        env.db,
        "serial_link_outbox",
        {"serial_code": "VARCHAR(100) NULL", "dag_token_id": "BIGINT NULL"},
    )
    rows: dict[str, tuple[str | None, int | None]] = {
        "null_token": (A, None),
        "zero_token": (A, 0),
        "negative_token": (B, -5),
        "null_serial": (None, 60),
        "nul": (WITH_NUL, 77),
        "tab": ("BLVR\tX", 78),
        "a": (A, 50),
        "b": (B, 51),
    }
    ids = {}
    with env.db.begin() as conn:
        for age, (name, (serial, token)) in enumerate(rows.items()):
            created = UTC_NOW - timedelta(minutes=60 - age)
            ids[name] = int(
                conn.execute(
                    OUT.insert().values(
                        serial_code=serial,
                        dag_token_id=token,
                        status="pending",
                        retry_count=0,
                        created_at=created,
                        updated_at=created,
                    )
                ).inserted_primary_key[0]
            )
        if env.backend == "sqlite":
            ids["undecodable"] = int(
                conn.execute(
                    sa.text(
                        "INSERT INTO serial_link_outbox (serial_code, dag_token_id, status, "
                        "retry_count, created_at, updated_at) "
                        f"VALUES (CAST({UNDECODABLE} AS TEXT), "
                        "79, 'pending', 0, '2025-11-20 11:00:10.000000', "
                        "'2025-11-20 11:00:10.000000')"
                    )
                ).lastrowid
            )
    return ids


POISON_OUTBOX = {
    "null_token": "dag_token_id is NULL",
    "zero_token": "not a token id (0)",
    "negative_token": "not a token id (-5)",
    "null_serial": "serial_code is NULL",
    "nul": "U+0000",
    "tab": "U+0009",
    "undecodable": "not valid UTF-8",
}


def registry_links(env: Env) -> dict[str, int | None]:
    with env.dbs.core.connect() as conn:
        reg = core.serial_registry
        return {
            r.serial_code: r.dag_token_id
            for r in conn.execute(sa.select(reg.c.serial_code, reg.c.dag_token_id))
        }


def test_outbox_poison_rows_go_dead_and_never_block_the_rows_behind(env: Env) -> None:
    ids = populate_outbox(env)
    poison = {name: word for name, word in POISON_OUTBOX.items() if name in ids}
    expected = {
        **dict.fromkeys(serial_outbox.COUNTERS, 0),
        "pending_found": len(ids),
        "retried": len(ids),
        "succeeded": 2,
        "marked_dead": len(poison),
        "bad_rows": len(poison),
    }
    pristine = env.digest()

    dry, events = env.run("serial_outbox", dry_run=True)
    assert dry == expected
    assert {e["id"] for e in events if e["event"] == "bad_row"} == {ids[n] for n in poison}
    assert env.digest() == pristine

    first, events = env.run("serial_outbox")
    assert first == expected
    named = {e["id"]: e for e in events if e["event"] == "bad_row"}
    assert named.keys() == {ids[n] for n in poison}
    assert all(named[ids[n]]["table"] == "serial_link_outbox" for n in poison)
    rows = {r.id: r for r in env.rows(OUT)}
    for name, word in poison.items():
        row = rows[ids[name]]
        assert (row.status, row.retry_count) == ("dead", 1), name
        assert word in row.last_error, (name, row.last_error)
        assert word in named[ids[name]]["problem"]
    assert (rows[ids["a"]].status, rows[ids["b"]].status) == ("done", "done")
    # the serial without the NUL is never linked by the row whose serial has one
    assert registry_links(env) == {A: 50, B: 51, C: None}

    after_first = env.digest()
    second, _ = env.run("serial_outbox")
    assert second == dict.fromkeys(serial_outbox.COUNTERS, 0)
    assert env.digest() == after_first


def test_registry_state_counts_only_for_the_serial_sent(env: Env) -> None:
    """Second guard: a key with a control character is refused at the JSON binding, and a
    registry row read back for another serial than the one sent is no match."""
    with env.dbs.core.begin() as conn:
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": C,
                    "tenant_id": 1,
                    "org_code": "BLVR",
                    "production_type": "hatthasilpa",
                    "dag_token_id": None,
                    "created_at": RECENT,
                }
            ],
        )
    with env.dbs.core.connect() as conn:
        with pytest.raises(ValueError, match="control characters"):
            outbox_store._bind_links(conn, {WITH_NUL: 77})
        links = outbox_store._LINKS.bind(conn, [(WITH_NUL, 77)])  # bypassing the guard
        assert outbox_store._read_registry(conn, links, [WITH_NUL]) == {}
        assert outbox_store._read_registry(
            conn, outbox_store._LINKS.bind(conn, [(C, 77)]), [C]
        ) == {C: outbox_store.RegistryState(1, "hatthasilpa", None)}


def test_outbox_serial_with_nul_never_links_the_serial_without_it(env: Env) -> None:
    """The NUL row alone before a good one: SQLite's ->> would read WITH_NUL as C."""
    with env.dbs.core.begin() as conn:
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": serial,
                    "tenant_id": 1,
                    "org_code": "BLVR",
                    "production_type": "hatthasilpa",
                    "dag_token_id": None,
                    "created_at": RECENT,
                }
                for serial in (A, C)
            ],
        )
    with env.db.begin() as conn:
        conn.execute(
            OUT.insert(),
            [
                {
                    "serial_code": serial,
                    "dag_token_id": token,
                    "status": "pending",
                    "retry_count": 0,
                    "created_at": RECENT + timedelta(minutes=n),
                    "updated_at": RECENT,
                }
                for n, (serial, token) in enumerate(((WITH_NUL, 77), (A, 50)))
            ],
        )
    counters, _ = env.run("serial_outbox")
    assert registry_links(env) == {A: 50, C: None}
    assert (counters["succeeded"], counters["marked_dead"], counters["bad_rows"]) == (1, 1, 1)
    dead = [r for r in env.rows(OUT) if r.status == "dead"]
    assert [(r.serial_code, r.retry_count) for r in dead] == [(WITH_NUL, 1)]
    assert "U+0000" in dead[0].last_error


@pytest.mark.parametrize(
    ("serial", "table", "source_id", "problem"),
    [
        (S["gen_zero"], "job_ticket_serial", 5, "generated_at"),
        (S["gen_text"], "job_ticket_serial", 6, "generated_at"),
        (S["tz_zero"], "flow_token", 21, "spawned_at"),
        (S["tz_one"], "flow_token", 22, "spawned_at"),
    ],
)
def test_explain_names_a_poison_row_as_the_check_skips_it(
    env: Env, serial: str, table: str, source_id: int, problem: str
) -> None:
    populate_check(env)
    lines: list[str] = []
    assert (
        explain_text.explain(
            env.settings,
            env.dbs,
            serial,
            "DEFAULT",
            lines.append,
            as_json=True,
            clock=FixedClock(NOW),
        )
        == 0
    )
    facts = json.loads("\n".join(lines))
    conclusions = facts["tenants"]["DEFAULT"]["conclusions"]
    bad = [c for c in conclusions if c["outcome"] == "bad_row"]
    assert [(c["source_table"], c["source_id"]) for c in bad] == [(table, source_id)]
    assert bad[0]["detail"].startswith(problem)
    text: list[str] = []
    explain_text.explain(
        env.settings, env.dbs, serial, "DEFAULT", text.append, clock=FixedClock(NOW)
    )
    assert any("bad_row" in line for line in text), text
