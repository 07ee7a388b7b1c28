"""The ERP's own schema (tests/erp_fixture.py, from the ERP's documents), both dashboard
shapes, on SQLite and MariaDB: db check -> db upgrade -> db check -> every job through
the runner -> a second upgrade with nothing to do; the dry run's SQL, applied by hand to
a copy, gives the schema the real upgrade gives; the ERP's own rows stay untouched."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import dashboard_data as dd
import erp_fixture as erp
import pytest
import sqlalchemy as sa
from helpers import DbUrls, write_settings
from jobs_helpers import table_digest

from bgworkers.db import ensure_database
from bgworkers.demo.harness import make_context
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.runner import Runner
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs import BY_NAME
from bgworkers.jobs.dashboards import job as dashboard
from bgworkers.service import dbadmin
from bgworkers.settings import Settings, load_settings

JOBS = (
    "serial_consistency",
    "serial_outbox",
    "dashboard_fast",
    "dashboard_medium",
    "dashboard_slow",
)
ADDED_REASONS = ("orphaned", "registry_mismatch", "unregistered")


@dataclass
class Install:
    settings: Settings
    dbs: Databases
    shape: str

    @property
    def tenant(self) -> sa.Engine:
        return self.dbs.tenant("DEFAULT")

    def engine_for(self, code: str, database: str) -> sa.Engine:
        """A fresh database next to the install's, built like it (schema only)."""
        url = self.settings.tenant_url(code)
        ensure_database(self.dbs.url(url), self.settings.database)
        engine = self.dbs.engine(url)
        erp.build(engine, database, self.shape)
        return engine

    def lines(self, command: str, *args: Any) -> tuple[int, list[str]]:
        out: list[str] = []
        fn = {"check": dbadmin.check, "upgrade": dbadmin.upgrade}[command]
        status = fn(self.settings, self.dbs, *args, out.append)
        return status, out

    def untouched(self) -> dict[str, str]:
        digest = table_digest({"core": self.dbs.core, "tenant": self.tenant})
        return {
            k: v for k, v in digest.items() if k.split(".")[1] in erp.UNTOUCHED[k.split(".")[0]]
        }


@pytest.fixture(params=erp.SHAPES)
def install(
    request: pytest.FixtureRequest, db_urls: DbUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Install]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(erp.SALTS_ENV, erp.SALTS)
    settings = load_settings(write_settings(tmp_path / "settings.toml", db_urls))
    dbs = Databases(settings)
    shape = str(request.param)
    try:
        erp.build(dbs.core, "core")
        ensure_database(dbs.url(settings.tenant_url("DEFAULT")), settings.database)
        erp.build(dbs.tenant("DEFAULT"), "tenant", shape)
        erp.load_core(dbs.core)
        erp.load_tenant(dbs.tenant("DEFAULT"), shape)
        yield Install(settings, dbs, shape)
    finally:
        dbs.dispose()


def schema(engine: sa.Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability) and indexes, as the database reports them."""
    insp = sa.inspect(engine)
    out = {}
    for name in sorted(insp.get_table_names()):
        columns = [(c["name"], repr(c["type"]), c["nullable"]) for c in insp.get_columns(name)]
        indexes = sorted(
            (str(ix["name"]), tuple(ix["column_names"]), bool(ix["unique"]))
            for ix in insp.get_indexes(name)
        )
        out[name] = (columns, indexes)
    return out


def printed_sql(lines: list[str]) -> dict[str, list[str]]:
    """The dry run's statements per database ('core', 'tenant DEFAULT')."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in lines:
        if line.startswith("-- "):
            current = line[3:].split(" (")[0]
            out.setdefault(current, [])
        else:
            assert line.endswith(";"), line
            out[current].append(line[:-1])
    return out


def _dec(value: Any) -> Any:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.01"))


def latest(
    engine: sa.Engine, name: str, key: tuple[str, ...], values: tuple[str, ...]
) -> dict[Any, tuple[Any, ...]]:
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    newest = sa.select(sa.func.max(table.c.snapshot_at)).scalar_subquery()
    cols = [table.c[c] for c in (*key, *values)]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).where(table.c.snapshot_at == newest)).all()
    out = {}
    for row in rows:
        k = tuple(row[: len(key)])
        out[k if len(k) > 1 else k[0]] = tuple(
            _dec(v) if isinstance(v, Decimal | float) else v for v in row[len(key) :]
        )
    assert len(out) == len(rows)
    return out


def _norm(expected: dict[Any, tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
    return {
        k: tuple(_dec(v) if isinstance(v, Decimal) else v for v in vs) for k, vs in expected.items()
    }


def test_documented_schema_check_upgrade_jobs_and_a_second_upgrade(install: Install) -> None:
    shape, tenant_db = install.shape, install.tenant
    before_digest = install.untouched()
    erp_schema = {"core": schema(install.dbs.core), "tenant": schema(tenant_db)}

    # db check: only what db upgrade adds is missing; nothing the ERP must provide
    status, lines = install.lines("check")
    assert status == 1
    assert not any("the ERP must provide" in line for line in lines), lines
    core_line, tenant_line = lines
    assert "MISSING table bgw_run; table bgw_lease" in core_line
    assert tenant_line.endswith("(run `bgworkers db upgrade`)")
    if shape == "guide":
        assert (
            "column mv_cycle_time_analytics.p50_minutes; "
            "column mv_cycle_time_analytics.p95_minutes" in tenant_line
        )
        assert "table mv_dashboard_trends" not in tenant_line  # the install's own is used
    else:
        assert (
            "column mv_node_bottlenecks.node_code; column mv_node_bottlenecks.node_name; "
            "column mv_team_workload.team_name; column mv_team_workload.team_category"
            in tenant_line
        )
        assert "table mv_dashboard_trends" in tenant_line

    # before the upgrade a refresh fails on the schema, and says what to run
    job, table, column = (
        ("dashboard_medium", "mv_cycle_time_analytics", "p50_minutes")
        if shape == "guide"
        else ("dashboard_fast", "mv_node_bottlenecks", "node_code")
    )
    ctx = make_context(install.settings, install.dbs, "DEFAULT", erp.NOW, job)
    dashboard.run(ctx)
    name = tenant_db.url.database
    expected_error = (
        f"tenant DEFAULT database {name}: table {table} has no column {column}; "
        "run `bgworkers db upgrade`"
    )
    assert any(expected_error in problem for problem in ctx.problems), ctx.problems

    # the dry run prints exactly what the upgrade runs: applied by hand to copies built
    # the same way, it gives the schema the real upgrade gives
    status, dry = install.lines("upgrade", None, True)
    assert status == 0, dry
    sql = printed_sql(dry)
    assert set(sql) == {"core", "tenant DEFAULT"}
    tenant_sql = "\n".join(sql["tenant DEFAULT"])
    assert tenant_sql.count("CREATE TABLE mv_dashboard_trends") == (shape == "t27")
    assert "\n".join(sql["core"]).count("CREATE INDEX ix_bgw_run_job_tenant_status") == 1
    assert schema(tenant_db) == erp_schema["tenant"]  # the dry run changed nothing
    copies = {
        "core": install.engine_for("corecopy", "core"),
        "tenant DEFAULT": install.engine_for("tenantcopy", "tenant"),
    }
    for label, engine in copies.items():
        with engine.begin() as conn:
            for stmt in sql[label]:
                conn.exec_driver_sql(stmt)

    status, applied = install.lines("upgrade", None, False)
    assert status == 0, applied
    assert all("applied" in line for line in applied), applied
    assert schema(install.dbs.core) == schema(copies["core"])
    assert schema(tenant_db) == schema(copies["tenant DEFAULT"])

    status, lines = install.lines("check")
    assert status == 0, lines
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["ok", "ok"]

    # nothing of the ERP's was dropped or changed: columns, types, indexes
    for label, engine in (("core", install.dbs.core), ("tenant", tenant_db)):
        now = schema(engine)
        for table, (columns, indexes) in erp_schema[label].items():
            kept = {c[0]: c for c in now[table][0]}
            for column in columns:
                if table == "serial_quarantine" and column[0] == "reason":
                    continue
                assert kept[column[0]] == column, (table, column)
            assert set(indexes) <= set(now[table][1]), table
    if tenant_db.dialect.name == "mysql":  # the ENUM only widened, the ERP's values first
        with tenant_db.connect() as conn:
            column_type, nullable = conn.execute(
                sa.text(
                    "SELECT COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'serial_quarantine' "
                    "AND COLUMN_NAME = 'reason'"
                )
            ).one()
        assert column_type == (
            "enum('invalid_format','checksum_fail','hash_fail','duplicate',"
            "'orphaned','registry_mismatch','unregistered')"
        )
        assert nullable == "NO"

    # every job, through the runner, at the scenario's time
    runner = Runner(install.settings, BY_NAME, clock=FixedClock(erp.NOW))
    try:
        for job in JOBS:
            result = runner.tick(job, erp.NOW)
            outcome = result.tenants["DEFAULT"]
            assert (outcome.status, outcome.error) == ("ok", None), (job, outcome)
    finally:
        runner.close()

    _assert_dashboards(tenant_db)
    _assert_serials(install)
    _assert_php_snapshots_purged(tenant_db, shape)

    # a second upgrade has nothing to do, and its dry run prints no statement
    status, again = install.lines("upgrade", None, False)
    assert status == 0 and all(line.endswith("up to date, nothing to do") for line in again)
    status, dry = install.lines("upgrade", None, True)
    assert status == 0 and all(
        line.startswith("-- ") and line.endswith("nothing to do") for line in dry
    ), dry
    assert install.untouched() == before_digest


def _assert_dashboards(engine: sa.Engine) -> None:
    flow = latest(
        engine,
        "mv_token_flow_summary",
        ("graph_id", "node_id", "team_id"),
        ("wip_count", "completed_count", "waiting_count"),
    )
    assert flow == dd.FLOW
    bottlenecks = latest(
        engine,
        "mv_node_bottlenecks",
        ("node_id",),
        ("node_code", "node_name", "queue_depth", "avg_wait_minutes", "bottleneck_score"),
    )
    assert bottlenecks == _norm(dd.BOTTLENECKS)
    workload = latest(
        engine,
        "mv_team_workload",
        ("team_id",),
        ("team_name", "team_category", "active_tokens", "waiting_tokens", "avg_load"),
    )
    assert workload == _norm(erp.WORKLOAD)
    cycle = latest(
        engine,
        "mv_cycle_time_analytics",
        ("node_id", "team_id"),
        ("token_count", "p50_minutes", "p95_minutes", "avg_minutes"),
    )
    assert cycle == _norm(dd.CYCLE)
    trends = latest(
        engine,
        "mv_dashboard_trends",
        ("period_date", "production_type", "graph_id"),
        ("tokens_spawned", "tokens_completed", "avg_lead_time_hours", "throughput_per_day"),
    )
    assert trends == _norm(dd.TRENDS)


def _assert_serials(install: Install) -> None:
    with install.tenant.connect() as conn:
        reasons = set(
            conn.execute(
                sa.text(
                    "SELECT serial_code, reason FROM serial_quarantine WHERE resolved_at IS NULL"
                )
            ).all()
        )
        outbox = conn.execute(
            sa.text(
                "SELECT serial_code, dag_token_id, status, next_attempt_at FROM serial_link_outbox"
            )
        ).all()
        links = dict(
            conn.execute(
                sa.text("SELECT serial_number, spawned_token_id FROM job_ticket_serial")
            ).all()
        )
    assert reasons == {(erp.SERIAL["orphan"], "orphaned"), (erp.BAD, "checksum_fail")}
    assert [tuple(r) for r in outbox] == [(erp.SERIAL["core"], 1, "done", None)]
    assert links[erp.SERIAL["tenant"]] == 2  # the missing tenant link, made
    with install.dbs.core.connect() as conn:
        core_links = dict(
            conn.execute(sa.text("SELECT serial_code, dag_token_id FROM serial_registry")).all()
        )
    assert core_links[erp.SERIAL["core"]] == 1  # linked in core by the outbox


def _assert_php_snapshots_purged(engine: sa.Engine, shape: str) -> None:
    old, recent = (at for at, _ in erp.PHP_SNAPSHOTS)
    with engine.connect() as conn:
        for name in (
            "mv_token_flow_summary",
            "mv_node_bottlenecks",
            "mv_team_workload",
            "mv_cycle_time_analytics",
            "mv_dashboard_trends",
        ):
            at = sa.text(f"SELECT snapshot_at FROM {name} WHERE snapshot_at < :snap")
            kept = [str(r[0])[:19] for r in conn.execute(at, {"snap": erp.SNAP})]
            # past retention: gone; the PHP script's last hour is still within it
            # (the trends' superseded snapshots go after an hour)
            expected = [] if name == "mv_dashboard_trends" else [str(recent)]
            assert kept == expected, (name, kept, shape, old)


@pytest.mark.mariadb
@pytest.mark.parametrize("db_urls", ["mariadb"], indirect=True)  # ENUMs: MySQL/MariaDB only
@pytest.mark.parametrize("install", ["t27"], indirect=True)  # one shape suffices
def test_enum_widening_keeps_the_columns_own_values_default_and_comment(install: Install) -> None:
    query = sa.text(
        "SELECT COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, COLLATION_NAME, COLUMN_COMMENT "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'serial_quarantine' AND COLUMN_NAME = 'reason'"
    )
    with install.tenant.begin() as conn:  # a later ERP release: its own value, a default
        conn.exec_driver_sql(
            "ALTER TABLE serial_quarantine MODIFY reason ENUM('invalid_format','checksum_fail',"
            "'hash_fail','duplicate','it''s manual') CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT 'duplicate' COMMENT 'why it''s held'"
        )
        before = conn.execute(query).one()
    status, lines = install.lines("upgrade", None, False)
    assert status == 0, lines
    with install.tenant.connect() as conn:
        after = conn.execute(query).one()
    assert after[0] == before[0][:-1] + ",'orphaned','registry_mismatch','unregistered')"
    assert tuple(after[1:]) == tuple(before[1:])
    status, again = install.lines("upgrade", None, True)
    assert all(line.endswith("nothing to do") for line in again), again
