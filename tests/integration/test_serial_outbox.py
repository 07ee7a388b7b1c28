"""Job serial_outbox and `outbox requeue|stats`, on SQLite and MariaDB (SPEC section 5)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import DbUrls, build_world, write_settings
from jobs_helpers import alert_level

from bgworkers.demo.harness import make_context
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.job import JobContext, LeaseLost
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs.outbox import admin as outbox_admin
from bgworkers.jobs.outbox import job as serial_outbox
from bgworkers.jobs.outbox import store as outbox_store
from bgworkers.schema import core, tenant
from bgworkers.settings import Settings

NOW = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
TABLE_NOW = datetime(2026, 1, 15, 3, 0)  # naive UTC, as the serial tables store it
TID = 1
JOB = "serial_outbox"
REG, OUT = core.serial_registry, tenant.serial_link_outbox
ORGS = [
    {
        "id_org": 1,
        "code": "DEFAULT",
        "name": "Bellavier Atelier",
        "status": "active",
        "org_serial_code": "BLVR",
    },
    {
        "id_org": 2,
        "code": "maison_atelier",
        "name": "Maison Atelier",
        "status": "1",
        "org_serial_code": "MAIS",
    },
]


@dataclasses.dataclass
class Env:
    settings: Settings
    dbs: Databases
    config: Path
    urls: DbUrls

    @property
    def tenant_db(self) -> sa.Engine:
        return self.dbs.tenant("DEFAULT")

    def ctx(self, dry_run: bool = False) -> JobContext:
        return make_context(self.settings, self.dbs, "DEFAULT", NOW, JOB, dry_run=dry_run)


@contextlib.contextmanager
def make_env(db_urls: DbUrls, tmp_path: Path, extra: str = "") -> Iterator[Env]:
    config = write_settings(
        tmp_path / "settings.toml", db_urls, '[database]\nconnect_timeout = "3s"\n' + extra
    )
    world = build_world(config, ORGS, erp_schema=True, only=["DEFAULT"])
    try:
        yield Env(world.settings, world.dbs, config, db_urls)
    finally:
        world.dbs.dispose()


@pytest.fixture
def env(db_urls: DbUrls, tmp_path: Path) -> Iterator[Env]:
    with make_env(db_urls, tmp_path) as environment:
        yield environment


def serial(n: int) -> str:
    return f"BLVR-HAT-BAG{n % 100:02d}-20260115-{n:05d}-AB12-X"


def registry_rows(
    ns: Iterable[int],
    created: datetime = TABLE_NOW,
    token: Callable[[int], int | None] = lambda n: None,
    tenant_id: int = TID,
    ptype: str = "hatthasilpa",
) -> list[dict[str, Any]]:
    return [
        {
            "serial_code": serial(n),
            "tenant_id": tenant_id,
            "org_code": "DEFAULT",
            "production_type": ptype,
            "dag_token_id": token(n),
            "created_at": created,
        }
        for n in ns
    ]


def register(
    env: Env, n: int, token: int | None = None, tenant_id: int = TID, ptype: str = "hatthasilpa"
) -> None:
    with env.dbs.core.begin() as conn:
        rows = registry_rows([n], datetime(2026, 1, 14), lambda _: token, tenant_id, ptype)
        conn.execute(REG.insert(), rows)


def enqueue(
    env: Env,
    n: int,
    token: int,
    *,
    age_min: int = 60,
    retry_count: int = 0,
    status: str = "pending",
    next_at: datetime | None = None,
) -> int:
    created = TABLE_NOW - timedelta(minutes=age_min)
    with env.tenant_db.begin() as conn:
        result = conn.execute(
            OUT.insert().values(
                serial_code=serial(n),
                dag_token_id=token,
                status=status,
                retry_count=retry_count,
                created_at=created,
                updated_at=created,
                next_attempt_at=next_at,
            )
        )
        return int(result.inserted_primary_key[0])


def outbox_rows(env: Env) -> dict[int, Any]:
    with env.tenant_db.connect() as conn:
        return {row.id: row for row in conn.execute(sa.select(OUT).order_by(OUT.c.id))}


def links(env: Env) -> dict[str, int | None]:
    with env.dbs.core.connect() as conn:
        return {
            row.serial_code: row.dag_token_id
            for row in conn.execute(sa.select(REG.c.serial_code, REG.c.dag_token_id))
        }


def counters(**values: int) -> dict[str, int]:
    return {**dict.fromkeys(serial_outbox.COUNTERS, 0), **values}


# --- statement plans ----------------------------------------------------------------------

BATCH_STATEMENTS = {  # statement -> (its JSON rows, the table it finds by key)
    "_CLAIM": ("candidates", "serial_link_outbox"),
    "_LINK": ("links", "serial_registry"),
    "_STATES": ("links", "serial_registry"),
    "_DONE": ("done", "serial_link_outbox"),
    "_FAILED": ("failures", "serial_link_outbox"),
}


def _plan(engine: sa.Engine, statement: Any) -> list[Any]:
    compiled = statement.compile(dialect=engine.dialect)
    values = compiled.construct_params(
        {
            "now": TABLE_NOW,
            "tenant": TID,
            "candidates": "[[1]]",
            "done": "[[1]]",
            "links": json.dumps([[serial(1), 5]]),
            "failures": json.dumps([[1, "pending", "x", "2026-01-15 03:05:00"]]),
        }
    )
    params = tuple(values[key] for key in compiled.positiontup or ())
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return list(conn.exec_driver_sql(explain + compiled.string, params).all())


@pytest.mark.parametrize("name", sorted(BATCH_STATEMENTS))
def test_batch_statements_read_the_batch_first_and_find_rows_by_key(env: Env, name: str) -> None:
    """Never one pass over the batch per table row: seconds per run instead of milliseconds."""
    source, table = BATCH_STATEMENTS[name]
    with env.dbs.core.begin() as conn:
        conn.execute(REG.insert(), registry_rows(range(2000)))
    with env.tenant_db.begin() as conn:
        conn.execute(
            OUT.insert(),
            [
                {
                    "serial_code": serial(n),
                    "dag_token_id": n,
                    "created_at": TABLE_NOW,
                    "updated_at": TABLE_NOW,
                }
                for n in range(2000)
            ],
        )
    engine = env.dbs.core if table == "serial_registry" else env.tenant_db
    plan = _plan(engine, getattr(outbox_store, name))
    if engine.dialect.name == "sqlite":  # (id, parent, notused, detail)
        steps = [row[3] for row in plan]
        assert steps.index(f"SCAN {source}") < len(steps) - 1, steps
        assert steps[-1].startswith(f"SEARCH {table} USING "), steps
        assert "(rowid=?)" in steps[-1] or "(serial_code=?)" in steps[-1], steps
    else:  # (id, select_type, table, type, possible_keys, key, ...)
        assert [(row[2], row[3]) for row in plan] == [(source, "ALL"), (table, "eq_ref")], plan
        assert plan[1][5] in ("PRIMARY", "serial_code"), plan


# --- each path ----------------------------------------------------------------------------


def test_success_links_in_core_and_marks_done(env: Env) -> None:
    for n in (3, 1, 2):  # registry ids in another order than the serials
        register(env, n)
    ids = [enqueue(env, n, 100 + n) for n in (1, 2, 3)]
    result = serial_outbox.run(env.ctx())
    assert result == counters(pending_found=3, retried=3, succeeded=3)
    assert alert_level("serial_outbox", result) == "info"
    assert links(env) == {serial(n): 100 + n for n in (1, 2, 3)}
    rows = outbox_rows(env)
    assert [(rows[i].status, rows[i].retry_count, rows[i].updated_at) for i in ids] == [
        ("done", 0, TABLE_NOW)
    ] * 3
    assert serial_outbox.run(env.ctx()) == counters()  # nothing left


def test_already_linked_to_same_token_is_idempotent_success(env: Env) -> None:
    register(env, 1, token=101)
    row_id = enqueue(env, 1, 101)
    assert serial_outbox.run(env.ctx()) == counters(pending_found=1, retried=1, succeeded=1)
    assert outbox_rows(env)[row_id].status == "done"
    assert links(env) == {serial(1): 101}


def test_linked_to_another_token_goes_dead_at_once(env: Env) -> None:
    register(env, 1, token=999)
    row_id = enqueue(env, 1, 101)
    with structlog.testing.capture_logs() as logs:
        result = serial_outbox.run(env.ctx())
    assert result == counters(pending_found=1, retried=1, marked_dead=1)
    assert alert_level("serial_outbox", result) == "error"
    row = outbox_rows(env)[row_id]
    assert (row.status, row.retry_count, row.next_attempt_at) == ("dead", 1, None)
    assert "linked to another token (999)" in row.last_error
    assert links(env) == {serial(1): 999}  # never overwritten
    dead = [e for e in logs if e["event"] == "outbox_rows_dead"]
    assert dead and dead[0]["log_level"] == "error" and dead[0]["rows"][0]["id"] == row_id


def test_not_hatthasilpa_goes_dead_at_once_and_stays_unlinked(env: Env) -> None:
    register(env, 1, ptype="oem")
    row_id = enqueue(env, 1, 101)
    assert serial_outbox.run(env.ctx()) == counters(pending_found=1, retried=1, marked_dead=1)
    row = outbox_rows(env)[row_id]
    assert row.status == "dead" and "production_type is 'oem'" in row.last_error
    assert links(env) == {serial(1): None}


def test_two_rows_for_one_serial_oldest_wins(env: Env) -> None:
    register(env, 1)
    register(env, 2)
    older = enqueue(env, 1, 101, age_min=90)
    newer = enqueue(env, 1, 102, age_min=30)
    twice = [enqueue(env, 2, 202), enqueue(env, 2, 202)]
    result = serial_outbox.run(env.ctx())
    assert result == counters(pending_found=4, retried=4, succeeded=3, marked_dead=1)
    rows = outbox_rows(env)
    assert [rows[i].status for i in (older, newer, *twice)] == ["done", "dead", "done", "done"]
    assert links(env) == {serial(1): 101, serial(2): 202}


def test_no_registry_row_retries_inside_the_exact_backoff_window(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(env, 9, tenant_id=2)  # registered, but to the other tenant: retryable too
    steps = {0: 60, 1: 300, 3: 3600, 4: 6 * 3600, 7: 6 * 3600}  # retry_count -> base seconds
    # higher ids are older rows: the batch runs in the opposite order of the ids
    ids = {rc: enqueue(env, rc, 100 + rc, retry_count=rc, age_min=50 + rc) for rc in steps}
    other = enqueue(env, 9, 109, age_min=1)
    monkeypatch.setattr(serial_outbox, "rng", random.Random(1234))
    result = serial_outbox.run(env.ctx())
    assert result == counters(pending_found=6, retried=6, failed_retry=6)
    # more than alerts.failed_retries_per_run (5) failed retries in one run
    assert alert_level("serial_outbox", result) == "warning"
    rows = outbox_rows(env)
    expect = random.Random(1234)  # the job draws once per failed row, oldest first
    for rc in sorted(steps, reverse=True):
        base, row = steps[rc], rows[ids[rc]]
        delay = round(base * (1 + expect.uniform(-0.1, 0.1)))
        assert row.status == "pending" and row.retry_count == rc + 1
        assert row.next_attempt_at == TABLE_NOW + timedelta(seconds=delay)
        assert (
            TABLE_NOW + timedelta(seconds=base * 0.9)
            <= row.next_attempt_at
            <= TABLE_NOW + timedelta(seconds=base * 1.1)
        )
        assert row.last_error == "no serial_registry row for tenant 1"
        assert row.updated_at == TABLE_NOW
    assert "registered to tenant 2" in rows[other].last_error
    assert serial_outbox.run(env.ctx()) == counters()  # not due yet


def test_serial_that_cannot_be_a_registry_key_goes_dead(env: Env) -> None:
    register(env, 1)
    with env.tenant_db.begin() as conn:
        conn.execute(
            OUT.insert(),
            [
                {
                    "serial_code": code,
                    "dag_token_id": 7,
                    "created_at": TABLE_NOW,
                    "updated_at": TABLE_NOW,
                }
                for code in (serial(1) + " ", "", "X" * 65)
            ],
        )
    assert serial_outbox.run(env.ctx()) == counters(pending_found=3, retried=3, marked_dead=3)
    assert {r.last_error for r in outbox_rows(env).values()} == {
        "serial_code cannot be a registry key (empty, over 64 chars or padded)"
    }
    assert links(env) == {serial(1): None}


def test_a_large_mixed_batch_gives_each_row_its_own_outcome(
    db_urls: DbUrls, tmp_path: Path
) -> None:
    rows_n = 1300  # over MariaDB's 1000-value IN-list threshold, in one batch
    with make_env(db_urls, tmp_path, f"[jobs.serial_outbox]\nbatch_size = {rows_n}\n") as env:
        shuffled = random.Random(7).sample(range(rows_n), rows_n)
        with env.dbs.core.begin() as conn:  # n % 3: 0 linkable, 1 linked elsewhere, 2 absent
            rows = registry_rows(
                (n for n in shuffled if n % 3 != 2),
                token=lambda n: None if n % 3 == 0 else 900_000 + n,
            )
            conn.execute(REG.insert(), rows)
        tokens = {n: random.Random(n).randrange(1, 10**12) for n in range(rows_n)}
        with env.tenant_db.begin() as conn:
            conn.execute(
                OUT.insert(),
                [
                    {
                        "serial_code": serial(n),
                        "dag_token_id": tokens[n],
                        "updated_at": TABLE_NOW,
                        "created_at": TABLE_NOW - timedelta(seconds=n),
                    }
                    for n in shuffled
                ],
            )
        third = len(range(0, rows_n, 3))
        assert serial_outbox.run(env.ctx()) == counters(
            pending_found=rows_n,
            retried=rows_n,
            succeeded=third,
            marked_dead=len(range(1, rows_n, 3)),
            failed_retry=len(range(2, rows_n, 3)),
        )
        by_serial = {r.serial_code: r for r in outbox_rows(env).values()}
        linked = links(env)
        for n in range(rows_n):
            row = by_serial[serial(n)]
            expected = ("done", 0) if n % 3 == 0 else ("dead", 1) if n % 3 == 1 else ("pending", 1)
            assert (row.status, row.retry_count) == expected, n
            if n % 3 == 1:
                assert row.last_error.endswith(f"({900_000 + n})")
            if n % 3 != 2:
                assert linked[serial(n)] == (tokens[n] if n % 3 == 0 else 900_000 + n)


def test_jitter_spreads_over_the_whole_window(env: Env) -> None:
    ids = [enqueue(env, n, 100 + n) for n in range(200)]
    assert serial_outbox.run(env.ctx())["failed_retry"] == 100  # batch_size 100
    rows = outbox_rows(env)
    delays = [(rows[i].next_attempt_at - TABLE_NOW).total_seconds() for i in ids[:100]]
    assert min(delays) >= 54 and max(delays) <= 66
    assert min(delays) <= 56 and max(delays) >= 64  # really jittered, both ways


def test_due_rows_oldest_first_and_batch_size(db_urls: DbUrls, tmp_path: Path) -> None:
    with make_env(db_urls, tmp_path, "[jobs.serial_outbox]\nbatch_size = 2\n") as env:
        late = enqueue(env, 1, 101, age_min=10)
        oldest = enqueue(env, 2, 102, age_min=50)  # higher id, older row
        waiting = enqueue(env, 3, 103, age_min=90, next_at=TABLE_NOW + timedelta(seconds=1))
        due_now = enqueue(env, 4, 104, age_min=20, next_at=TABLE_NOW)
        enqueue(env, 5, 105, age_min=95, status="done")
        for n in (1, 2, 3, 4):
            register(env, n)
        assert serial_outbox.run(env.ctx()) == counters(pending_found=2, retried=2, succeeded=2)
        rows = outbox_rows(env)
        assert [rows[i].status for i in (oldest, due_now, late, waiting)] == [
            "done",
            "done",
            "pending",
            "pending",
        ]
        assert serial_outbox.run(env.ctx())["succeeded"] == 1
        assert outbox_rows(env)[waiting].status == "pending"


def test_dead_when_retry_count_reaches_max_retries(env: Env) -> None:
    last = enqueue(env, 1, 101, retry_count=9)
    before_last = enqueue(env, 2, 102, retry_count=8)
    result = serial_outbox.run(env.ctx())
    assert result == counters(pending_found=2, retried=2, failed_retry=1, marked_dead=1)
    rows = outbox_rows(env)
    assert (rows[last].status, rows[last].retry_count) == ("dead", 10)
    assert rows[last].last_error.endswith("gave up after 10 attempts")
    assert rows[last].next_attempt_at is None
    assert (rows[before_last].status, rows[before_last].retry_count) == ("pending", 9)


def _unreachable_core(env: Env, tmp_path: Path) -> str:
    if env.urls.backend == "sqlite":
        (tmp_path / "core_is_a_directory").mkdir()
        return f"sqlite:///{tmp_path}/core_is_a_directory"
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"mysql+mysqldb://root@127.0.0.1:{port}/bgerp"


def test_core_unreachable_stops_batch_and_burns_no_retry(env: Env, tmp_path: Path) -> None:
    register(env, 1)
    ids = [enqueue(env, 1, 101), enqueue(env, 2, 102, retry_count=3)]
    before = outbox_rows(env)
    database = env.settings.database.model_copy(
        update={"core_url": _unreachable_core(env, tmp_path)}
    )
    bad = env.settings.model_copy(update={"database": database})
    bad_dbs = Databases(bad)
    ctx = dataclasses.replace(env.ctx(), settings=bad, dbs=bad_dbs)
    try:
        with structlog.testing.capture_logs() as logs:
            result = serial_outbox.run(ctx)
    finally:
        bad_dbs.dispose()
    assert result == counters(pending_found=2, errors=1)
    assert alert_level("serial_outbox", result) == "warning"
    assert [e["event"] for e in logs] == ["outbox_core_unavailable"]
    assert outbox_rows(env) == before  # untouched: no retry burned, no timestamp moved
    # the claims were released: a run with the core back takes the same rows at once
    assert serial_outbox.run(env.ctx()) == counters(
        pending_found=2, retried=2, succeeded=1, failed_retry=1
    )
    assert outbox_rows(env)[ids[1]].retry_count == 4


class _LoseLeaseAt:
    """A guard whose lease is lost at the n-th check (1-based)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def check(self) -> None:
        self.calls += 1
        if self.calls >= self.n:
            raise LeaseLost("lease taken over")


def test_lease_checked_before_each_write(env: Env) -> None:
    register(env, 1)
    row_id = enqueue(env, 1, 101)
    before = outbox_rows(env)
    for lost_at in (1, 2):  # before the claim, before the core write: nothing changes
        with pytest.raises(LeaseLost):
            serial_outbox.run(dataclasses.replace(env.ctx(), guard=_LoseLeaseAt(lost_at)))
        assert outbox_rows(env) == before and links(env) == {serial(1): None}
    with pytest.raises(LeaseLost):  # after the core commit, before the outbox update
        serial_outbox.run(dataclasses.replace(env.ctx(), guard=_LoseLeaseAt(3)))
    assert outbox_rows(env) == before and links(env) == {serial(1): 101}
    assert serial_outbox.run(env.ctx())["succeeded"] == 1  # and the next run ends it
    assert outbox_rows(env)[row_id].status == "done"


def test_dry_run_writes_nothing_and_predicts_the_run(env: Env) -> None:
    register(env, 1)
    register(env, 2, token=999)
    for n, token in ((1, 101), (2, 102), (3, 103)):
        enqueue(env, n, token)
    before, before_links = outbox_rows(env), links(env)
    preview = serial_outbox.run(env.ctx(dry_run=True))
    assert preview == counters(
        pending_found=3, retried=3, succeeded=1, failed_retry=1, marked_dead=1
    )
    assert outbox_rows(env) == before and links(env) == before_links
    assert serial_outbox.run(env.ctx()) == preview


def test_fault_hook_is_inert_unless_named(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    register(env, 1)
    enqueue(env, 1, 101)
    monkeypatch.setenv(serial_outbox.FAULT_ENV, "some_other_point")
    assert serial_outbox.run(env.ctx())["succeeded"] == 1


# --- requeue and stats --------------------------------------------------------------------


def test_requeue_by_id_and_all_dead(env: Env) -> None:
    dead = [enqueue(env, n, 100 + n, status="dead", retry_count=10) for n in (1, 2, 3)]
    pending = enqueue(env, 4, 104)
    clock = FixedClock(NOW)
    lines: list[str] = []

    def requeue(
        ids: list[int] | None, all_dead: bool, dry_run: bool = False, code: str = "DEFAULT"
    ) -> int:
        lines.clear()
        return outbox_admin.requeue(
            env.settings, env.dbs, code, ids, all_dead, dry_run, lines.append, clock
        )

    assert requeue([dead[0], pending, 999], False) == 1
    assert lines == [
        f"tenant DEFAULT: id {pending}: status pending, not dead: left alone",
        "tenant DEFAULT: id 999: no such outbox row",
        f"tenant DEFAULT: requeued 1 dead row(s): ids {dead[0]}",
    ]
    row = outbox_rows(env)[dead[0]]
    assert (row.status, row.retry_count, row.next_attempt_at, row.updated_at) == (
        "pending",
        0,
        None,
        TABLE_NOW,
    )

    before = outbox_rows(env)
    assert requeue(None, True, dry_run=True) == 0
    assert lines == [f"tenant DEFAULT: would requeue 2 dead row(s): ids {dead[1]}, {dead[2]}"]
    assert outbox_rows(env) == before

    assert requeue(None, True) == 0
    assert {r.status for r in outbox_rows(env).values()} == {"pending"}
    assert requeue(None, True) == 0 and "requeued 0 rows" in lines[0]

    assert requeue([1], True) == 2 and "one of them" in lines[0]
    assert requeue([], False) == 2
    assert requeue(None, True, code="nobody") == 2 and lines == [
        "tenant nobody: not in core organization"
    ]
    assert requeue(None, True, code="bad-code") == 2 and "refused" in lines[0]


def test_stats_counts_and_oldest_pending_age(env: Env) -> None:
    enqueue(env, 1, 101, age_min=125)
    enqueue(env, 2, 102, age_min=5, next_at=TABLE_NOW + timedelta(minutes=3))
    enqueue(env, 3, 103, status="done")
    enqueue(env, 4, 104, status="dead")
    lines: list[str] = []
    assert outbox_admin.stats(env.settings, env.dbs, None, lines.append, FixedClock(NOW)) == 1
    assert lines[0] == outbox_admin.STATS_HEADER
    assert lines[1].split() == [
        "DEFAULT",
        "2",
        "1",
        "1",
        "1",
        "2h",
        "05m",
        "(since",
        "2026-01-15",
        "00:55:00",
        "UTC)",
    ]
    # maison_atelier is active but its database was never created: named, the rest goes on
    assert lines[2].startswith("tenant maison_atelier: FAILED")
    lines.clear()
    assert outbox_admin.stats(env.settings, env.dbs, "DEFAULT", lines.append, FixedClock(NOW)) == 0
    assert len(lines) == 2
    assert outbox_admin.format_age(timedelta(days=3, hours=4, minutes=5)) == "3d 4h"
    assert outbox_admin.format_age(timedelta(seconds=75)) == "1m 15s"


# --- crash safety and concurrency: real processes -----------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, time
    from datetime import datetime
    from pathlib import Path
    from bgworkers.demo.harness import make_context
    from bgworkers.jobs.outbox import job as serial_outbox
    from bgworkers.jobs.outbox import store as outbox_store
    from bgworkers.settings import load_settings
    from bgworkers.engine.tenancy import Databases

    config, now, mode = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), sys.argv[3]
    settings = load_settings(config)
    dbs = Databases(settings)
    ctx = make_context(settings, dbs, "DEFAULT", now, "serial_outbox")
    totals = dict.fromkeys(serial_outbox.COUNTERS, 0)
    totals["runs"] = 0
    if mode != "once":  # barrier: connected and ready, then all start at once
        with ctx.db.connect(), ctx.core.connect():
            pass
        Path(mode + ".ready").touch()
        while not Path(mode + ".go").exists():
            time.sleep(0.01)
    while True:
        result = serial_outbox.run(ctx)
        totals["runs"] += 1
        for key, value in result.items():
            totals[key] += value
        if mode == "once" or result["pending_found"] == 0:
            break
    print(json.dumps(totals))
""")


def worker(env: Env, tmp_path: Path, mode: str, **env_vars: str) -> subprocess.Popen[str]:
    script = tmp_path / "outbox_worker.py"
    script.write_text(WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), str(env.config), NOW.isoformat(), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env_vars},
    )


def test_crash_between_core_link_and_outbox_update_ends_done(env: Env, tmp_path: Path) -> None:
    register(env, 1)
    register(env, 2, token=555)  # another token: must stay 555
    ok, other, missing = enqueue(env, 1, 101), enqueue(env, 2, 102), enqueue(env, 3, 103)
    before = outbox_rows(env)
    proc = worker(env, tmp_path, "once", BGWORKERS_FAULT="outbox_after_core_link")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -9, stderr  # SIGKILL, right after the core commit
    assert links(env) == {serial(1): 101, serial(2): 555}  # the core write committed
    assert outbox_rows(env) == before  # the outbox update never happened
    result = serial_outbox.run(env.ctx())
    assert result == counters(
        pending_found=3, retried=3, succeeded=1, failed_retry=1, marked_dead=1
    )
    rows = outbox_rows(env)
    assert [(rows[i].status, rows[i].retry_count) for i in (ok, other, missing)] == [
        ("done", 0),
        ("dead", 1),
        ("pending", 1),
    ]
    assert links(env) == {serial(1): 101, serial(2): 555}  # the one correct link


ATTEMPTS = sa.Table(
    "attempt_log",
    sa.MetaData(),
    sa.Column("outbox_id", sa.BigInteger),
    sa.Column("old_status", sa.String(10)),
    sa.Column("new_status", sa.String(10)),
    sa.Column("retry_count", sa.Integer),
)


def _attempt_log(engine: sa.Engine, backend: str) -> None:
    """Every UPDATE of an outbox row leaves a line, written by the database itself."""
    ATTEMPTS.create(engine)
    body = "INSERT INTO attempt_log VALUES (OLD.id, OLD.status, NEW.status, NEW.retry_count)"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER outbox_attempts AFTER UPDATE ON serial_link_outbox FOR EACH ROW "
            + (f"BEGIN {body}; END" if backend == "sqlite" else body)
        )


ROWS = 10_000


BATCH = 500


def test_two_workers_process_every_row_exactly_once(db_urls: DbUrls, tmp_path: Path) -> None:
    with make_env(db_urls, tmp_path, f"[jobs.serial_outbox]\nbatch_size = {BATCH}\n") as env:
        created = TABLE_NOW - timedelta(hours=1)
        with env.dbs.core.begin() as conn:  # even rows linkable, odd rows unregistered
            conn.execute(REG.insert(), registry_rows(range(0, ROWS, 2), created))
        with env.tenant_db.begin() as conn:
            conn.execute(
                OUT.insert(),
                [
                    {
                        "serial_code": serial(n),
                        "dag_token_id": 10_000 + n,
                        "created_at": created,
                        "updated_at": created,
                    }
                    for n in range(ROWS)
                ],
            )
        _attempt_log(env.tenant_db, db_urls.backend)
        procs = [worker(env, tmp_path, str(tmp_path / f"w{k}")) for k in (1, 2)]
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"w{k}.ready").exists() for k in (1, 2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                p.communicate() for p in procs if p.poll() is not None
            ]
            time.sleep(0.01)
        for k in (1, 2):
            (tmp_path / f"w{k}.go").touch()
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        totals = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        if db_urls.backend == "mariadb":  # side by side; SQLite's one writer may starve one
            assert all(t["pending_found"] > 0 for t in totals), totals
        summed = {key: sum(t[key] for t in totals) for key in serial_outbox.COUNTERS}
        assert summed == counters(
            pending_found=ROWS, retried=ROWS, succeeded=ROWS // 2, failed_retry=ROWS // 2
        )
        with env.tenant_db.connect() as conn:
            log = conn.execute(
                sa.select(ATTEMPTS.c.outbox_id, ATTEMPTS.c.new_status, ATTEMPTS.c.retry_count)
            ).all()
            final = conn.execute(
                sa.select(OUT.c.status, OUT.c.retry_count, sa.func.count()).group_by(
                    OUT.c.status, OUT.c.retry_count
                )
            ).all()
        assert len(log) == ROWS and len({row.outbox_id for row in log}) == ROWS  # once each
        assert sorted(tuple(r) for r in final) == [
            ("done", 0, ROWS // 2),
            ("pending", 1, ROWS // 2),
        ]
        linked = links(env)
        assert len(linked) == ROWS // 2
        assert all(linked[serial(n)] == 10_000 + n for n in range(0, ROWS, 2))
