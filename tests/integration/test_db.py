"""db init / upgrade / check and tenant discovery, on SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import CliResult, DbUrls, write_settings
from helpers import bgworkers as cli

from bgworkers.db import ensure_database
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.schema import core, tenant
from bgworkers.settings import Settings, load_settings

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
    {
        "id_org": 3,
        "code": "closed_shop",
        "name": "Closed",
        "status": "inactive",
        "org_serial_code": None,
    },
    {
        "id_org": 4,
        "code": "bad-code",
        "name": "Hyphenated",
        "status": "active",
        "org_serial_code": None,
    },
]


def bgworkers(config: Path, *args: str) -> CliResult:
    return cli("--config", str(config), *args)


@pytest.fixture
def config(db_urls: DbUrls, tmp_path: Path) -> Path:
    return write_settings(tmp_path / "settings.toml", db_urls)


@pytest.fixture
def dbs(config: Path) -> Iterator[Databases]:
    databases = Databases(load_settings(config))
    yield databases
    databases.dispose()


def add_orgs(engine: sa.Engine, rows: list[dict[str, object]] = ORGS) -> None:
    with engine.begin() as conn:
        conn.execute(core.organization.insert(), rows)


def test_init_creates_core_then_tenants_and_check_passes(config: Path, dbs: Databases) -> None:
    first = bgworkers(config, "db", "init")
    assert first.returncode == 0, first.stderr
    assert "core (" in first.stdout
    assert (
        "created 6 tables (migrations: coord_0001, coord_0002, coord_0003, coord_0004)"
        in first.stdout
    )
    assert "tenant" not in first.stdout  # no organizations yet

    add_orgs(dbs.core)
    second = bgworkers(config, "db", "init")
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert "already has 6 tables, left alone" in lines[0]
    assert "tenant bad-code: tenant code 'bad-code' refused" in second.stdout
    created = "created 19 tables (migrations: tenant_0001, tenant_0002, tenant_0003)"
    assert sum(created in line for line in lines) == 2
    assert "closed_shop" not in second.stdout

    check = bgworkers(config, "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert [line.split()[-1] for line in check.stdout.splitlines()[1:]] == ["ok", "ok", "ok"]


def test_init_only_named_tenants(config: Path, dbs: Databases) -> None:
    assert bgworkers(config, "db", "init").returncode == 0
    add_orgs(dbs.core)
    result = bgworkers(config, "db", "init", "--tenant", "maison_atelier", "nobody")
    assert result.returncode == 0, result.stderr
    assert "tenant nobody: not an active tenant" in result.stdout
    assert "tenant maison_atelier (" in result.stdout and "tenant DEFAULT (" not in result.stdout


def _erp_baseline(dbs: Databases) -> None:
    """Core and tenant databases as the ERP ships them: none of this project's additions."""
    core.metadata.create_all(dbs.core)
    add_orgs(dbs.core, ORGS[:2])
    for code in ("DEFAULT", "maison_atelier"):
        ensure_database(dbs.url(dbs.settings.tenant_url(code)), dbs.settings.database)
        tenant.define(sa.MetaData(), erp_baseline=True).create_all(dbs.tenant(code))


def test_upgrade_is_additive_idempotent_and_dry_run_changes_nothing(
    config: Path, dbs: Databases
) -> None:
    _erp_baseline(dbs)
    with dbs.tenant("DEFAULT").begin() as conn:
        conn.execute(
            tenant.serial_link_outbox.insert().values(
                serial_code="BLVR-X",
                dag_token_id=7,
                status="pending",
                retry_count=2,
                created_at=datetime(2026, 1, 1),
                updated_at=datetime(2026, 1, 1),
            )
        )

    before = bgworkers(config, "db", "check")
    assert before.returncode == 1
    assert "core (" in before.stdout and (
        "MISSING table bgw_run; table bgw_lease; table bgw_pause (run `bgworkers db upgrade`)"
        in before.stdout
    )
    assert (
        before.stdout.count(
            "MISSING column serial_link_outbox.next_attempt_at; index ix_serial_link_outbox_due; "
        )
        == 2
    )
    assert (
        before.stdout.count(
            "table mv_dashboard_trends; table bgw_node_visit (run `bgworkers db upgrade`)"
        )
        == 2
    )
    # a MySQL ENUM lacks the project's reasons; SQLite stores them as text
    widen = "values orphaned, registry_mismatch, unregistered of ENUM serial_quarantine.reason"
    assert before.stdout.count(widen) == (2 if dbs.core.dialect.name == "mysql" else 0)

    dry = bgworkers(config, "db", "upgrade", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would apply tenant_0001, tenant_0002, tenant_0003") == 2
    assert "would apply coord_0001, coord_0002, coord_0003, coord_0004" in dry.stdout
    assert "ADD COLUMN next_attempt_at DATETIME" in dry.stdout
    assert "CREATE TABLE mv_dashboard_trends" in dry.stdout
    assert "CREATE TABLE bgw_node_visit" in dry.stdout
    assert bgworkers(config, "db", "check").stdout == before.stdout  # nothing was applied

    applied = bgworkers(config, "db", "upgrade")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("applied tenant_0001, tenant_0002, tenant_0003") == 2
    assert "applied coord_0001, coord_0002, coord_0003, coord_0004" in applied.stdout

    again = bgworkers(config, "db", "upgrade")
    assert again.returncode == 0
    assert again.stdout.count("up to date, nothing to do") == 3
    assert bgworkers(config, "db", "check").returncode == 0

    # ERP data untouched; the new reasons are accepted (a MySQL ENUM had to be widened)
    with dbs.tenant("DEFAULT").begin() as conn:
        row = conn.execute(sa.select(tenant.serial_link_outbox)).one()
        assert (row.serial_code, row.retry_count, row.next_attempt_at) == ("BLVR-X", 2, None)
        conn.execute(
            tenant.serial_quarantine.insert().values(
                serial_code="BLVR-X",
                source_table="job_ticket_serial",
                source_id=1,
                reason="registry_mismatch",
                detected_at=datetime(2026, 1, 1),
            )
        )


def test_upgrade_of_one_tenant(config: Path, dbs: Databases) -> None:
    _erp_baseline(dbs)
    result = bgworkers(config, "db", "upgrade", "--tenant", "maison_atelier")
    assert result.returncode == 0, result.stderr
    assert "tenant maison_atelier (" in result.stdout and "DEFAULT" not in result.stdout
    check = bgworkers(config, "db", "check")
    assert check.returncode == 1
    assert "tenant DEFAULT (" in check.stdout and "tenant maison_atelier (" in check.stdout
    assert check.stdout.count("MISSING") == 1


def test_unreachable_tenant_fails_alone(db_urls: DbUrls, tmp_path: Path) -> None:
    broken = (
        "sqlite:////nonexistent-dir/t.db"
        if db_urls.backend == "sqlite"
        else db_urls.tenant("nobody_has_this_db")
    )
    config = write_settings(
        tmp_path / "s.toml", db_urls, f"[tenants.urls]\nmaison_atelier = '{broken}'\n"
    )
    dbs = Databases(load_settings(config))
    try:
        assert bgworkers(config, "db", "init").returncode == 0
        add_orgs(dbs.core, ORGS[:1])
        assert bgworkers(config, "db", "init").returncode == 0
        add_orgs(dbs.core, ORGS[1:2])
    finally:
        dbs.dispose()
    check = bgworkers(config, "db", "check")
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert lines[0].endswith(": ok") and lines[1].endswith(": ok")  # core, DEFAULT
    assert lines[2].startswith("tenant maison_atelier (")
    assert "MISSING database file" in lines[2] or "FAILED" in lines[2]


def test_discovery_filters_and_urls(db_urls: DbUrls, tmp_path: Path) -> None:
    config = write_settings(
        tmp_path / "s.toml",
        db_urls,
        """
[tenants]
exclude = ["maison_atelier"]
[tenants.urls]
DEFAULT = "sqlite:///override.db"
""",
    )
    settings = load_settings(config)
    dbs = Databases(settings)
    try:
        core.metadata.create_all(dbs.core)
        add_orgs(
            dbs.core,
            [
                *ORGS,
                {
                    "id_org": 5,
                    "code": "Atelier_5",
                    "name": "Five",
                    "status": "ACTIVE",
                    "org_serial_code": "AT05",
                },
            ],
        )
        tenants, problems = discover(settings, dbs.core)
    finally:
        dbs.dispose()
    assert [t.code for t in tenants] == ["DEFAULT", "Atelier_5"]
    assert tenants[0].serial_code == "BLVR" and tenants[0].id == 1
    assert [p.code for p in problems] == ["bad-code"]
    assert settings.tenant_url("DEFAULT") == "sqlite:///override.db"
    assert settings.tenant_url("Atelier_5") == db_urls.tenant_url.format(code_lower="atelier_5")

    include = Settings(database=settings.database, tenants={"include": ["maison_atelier"]})
    dbs = Databases(include)
    try:
        assert [t.code for t in discover(include, dbs.core)[0]] == ["maison_atelier"]
    finally:
        dbs.dispose()


def test_tenant_url_template_keeps_the_code_case() -> None:
    settings = Settings(database={"tenant_url": "mysql+mysqldb://u@h/bgerp_t_{code}"})
    assert settings.tenant_url("DEFAULT").endswith("/bgerp_t_DEFAULT")
    settings = Settings(database={"tenant_url": "mysql+mysqldb://u@h/bgerp_t_{code_lower}"})
    assert settings.tenant_url("DEFAULT").endswith("/bgerp_t_default")
