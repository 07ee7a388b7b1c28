"""Tenant identity, checked once (discover) and used by every command (resolve).

On SQLite and MariaDB: tenants that cannot be told apart are refused, both of
them; an operator naming a case variant of a code is refused with a hint and
nothing is written anywhere; the exact code reaches the tenant's own database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import DbUrls, MakeWorld, World
from jobs_helpers import table_digest

from bgworkers.db import ensure_database
from bgworkers.engine.tenancy import TenantError, discover, resolve
from bgworkers.schema import tenant
from bgworkers.settings import Settings, load_settings

OLD = datetime(2026, 1, 10, 8, 0)
SERIAL = "MAIS-HAT-BAG01-20260110-00001-AB12-X"


def org(id_org: int, code: str | None, status: str = "active") -> dict[str, Any]:
    return {"id_org": id_org, "code": code, "name": f"Org {id_org}", "status": status}


def recreate_organization(engine: sa.Engine, *, case_sensitive: bool) -> None:
    """organization as some installs have it: code may be NULL and, on MariaDB, compared
    byte for byte (a binary collation), so 'DEFAULT' and 'default' can both exist."""
    collation = "utf8mb4_bin" if case_sensitive and engine.dialect.name != "sqlite" else None
    md = sa.MetaData()
    sa.Table(
        "organization",
        md,
        sa.Column("id_org", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(50, collation=collation), nullable=True, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="active"),
        sa.Column("org_serial_code", sa.String(8)),
    )
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE organization"))
        md.create_all(conn)


@pytest.fixture
def world_of(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., World]:
    """A world of these organizations, every tenant with the ERP schema; the organization
    table reshaped first when codes may be NULL or are compared byte for byte."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    def make(
        orgs: list[dict[str, Any]],
        extra: str = "",
        case_sensitive: bool = False,
        nullable: bool = False,
    ) -> World:
        config = heartbeat_settings(tmp_path / "settings.toml", db_urls, every="1m", extra=extra)
        reshape = None
        if case_sensitive or nullable:

            def reshape(engine: sa.Engine) -> None:
                recreate_organization(engine, case_sensitive=case_sensitive)

        return make_world(config, orgs, erp_schema=True, organization=reshape)

    return make


def tenant_engine(world: World, raw_url: str) -> sa.Engine:
    """A tenant database with this project's schema, at any URL (created if missing)."""
    url = world.dbs.url(raw_url)
    ensure_database(url, world.settings.database)
    engine = world.dbs.engine(raw_url)
    tenant.metadata.create_all(engine)
    return engine


def add_dead_row(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tenant.serial_link_outbox).values(
                serial_code=SERIAL,
                dag_token_id=7,
                status="dead",
                retry_count=10,
                created_at=OLD,
                updated_at=OLD,
            )
        )


def outbox_statuses(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(tenant.serial_link_outbox.c.status)).scalars())


# ---------------------------------------------------------------- discover refuses


def test_codes_equal_ignoring_case_are_both_refused_everywhere(world_of: Any) -> None:
    world = world_of(
        [org(1, "DEFAULT"), org(2, "default", "1"), org(3, "maison_atelier")], case_sensitive=True
    )
    tenants, problems = discover(world.settings, world.dbs.core)
    assert [t.code for t in tenants] == ["maison_atelier"]
    assert [(p.id, p.code) for p in problems] == [(1, "DEFAULT"), (2, "default")]
    for problem in problems:
        assert "'DEFAULT' (organization id 1)" in problem.error
        assert "'default' (organization id 2)" in problem.error
        assert "the same code ignoring case" in problem.error
        assert "\n" not in problem.error
    for code in ("DEFAULT", "default"):
        with pytest.raises(TenantError, match=r"refused: it collides with"):
            resolve(world.settings, world.dbs.core, code)

    # the daemon's path: neither runs, nothing is recorded for them; the other tenant runs
    run = world.cli("run-once", "heartbeat", "--json")
    assert run.returncode == 1, run.stderr
    assert set(json.loads(run.stdout)["tenants"]) == {"DEFAULT", "default", "maison_atelier"}
    with world.dbs.coordination.connect() as conn:
        recorded = conn.execute(sa.text("SELECT tenant, status FROM bgw_run")).all()
    assert [tuple(r) for r in recorded] == [("maison_atelier", "ok")]

    status = world.cli("status", "--json")
    assert status.returncode == 2, status.stderr
    runs = {r["tenant"]: r for r in json.loads(status.stdout)["pairs"]}
    assert runs["maison_atelier"]["state"] == "OK" and runs["maison_atelier"]["refused"] is None
    for code in ("DEFAULT", "default"):
        assert runs[code]["state"] == "CRITICAL"
        assert "'default' (organization id 2)" in runs[code]["refused"]
    text = world.cli("status")
    assert text.returncode == 2
    assert (
        "    tenant refused: tenant 'DEFAULT' (organization id 1) refused: it collides "
        "with 'default' (organization id 2)" in text.stdout
    )

    stats = world.cli("outbox", "stats")
    assert stats.returncode == 1
    assert stats.stdout.startswith("tenant DEFAULT: tenant 'DEFAULT' (organization id 1) refused")
    explained = world.cli("explain", SERIAL)
    assert (
        "tenant default (id 2): REFUSED, not read: tenant 'default' (organization id 2) "
        "refused: it collides with 'DEFAULT' (organization id 1)" in explained.stdout
    )


def test_urls_of_one_database_are_both_refused(
    world_of: Any, db_urls: DbUrls, tmp_path: Path
) -> None:
    world = world_of([org(1, "DEFAULT"), org(2, "maison_atelier"), org(3, "third")])
    default_db = db_urls.tenant("DEFAULT")
    # the same database spelled differently: a dot segment, or without the query
    same = (
        default_db.replace(str(tmp_path), f"{tmp_path}/.")
        if db_urls.backend == "sqlite"
        else default_db.split("?")[0]
    )
    assert same != default_db
    other = db_urls.tenant("shared")
    cases = {
        "an override onto another tenant's template database": {"maison_atelier": same},
        "two overrides onto one database": {"DEFAULT": other, "maison_atelier": other},
    }
    for case, urls in cases.items():
        settings = Settings(database=world.settings.database, tenants={"urls": urls})
        tenants, problems = discover(settings, world.dbs.core)
        assert [t.code for t in tenants] == ["third"], case
        assert [(p.id, p.code) for p in problems] == [(1, "DEFAULT"), (2, "maison_atelier")], case
        for problem in problems:
            assert "'DEFAULT' (organization id 1)" in problem.error, case
            assert "'maison_atelier' (organization id 2)" in problem.error, case
            assert "the same database" in problem.error, case
            assert "ignoring case" not in problem.error, case


def test_null_empty_and_blank_codes_are_refused(
    world_of: Any, db_urls: DbUrls, tmp_path: Path
) -> None:
    world = world_of(
        [org(1, "DEFAULT"), org(5, None), org(6, ""), org(7, "\t"), org(8, None, "inactive")],
        nullable=True,
    )
    tenants, problems = discover(world.settings, world.dbs.core)
    assert [t.code for t in tenants] == ["DEFAULT"]
    assert [(p.id, p.code) for p in problems] == [(5, "<id 5>"), (6, "<id 6>"), (7, "<id 7>")]
    assert problems[0].error == "organization id 5 has no tenant code (NULL): refused"
    assert problems[1].error == "organization id 6 has a blank tenant code '': refused"
    assert problems[2].error == "organization id 7 has a blank tenant code '\\t': refused"
    if db_urls.backend == "sqlite":  # no database for a tenant called "None"
        assert sorted(p.name for p in tmp_path.glob("tenant_*.db")) == ["tenant_default.db"]
    status = world.cli("status", "--json")
    assert {r["tenant"]: r["state"] for r in json.loads(status.stdout)["pairs"]} == {
        "DEFAULT": "WARNING",
        "<id 5>": "CRITICAL",
        "<id 6>": "CRITICAL",
        "<id 7>": "CRITICAL",
    }


def test_override_keyed_with_the_wrong_case_is_reported(world_of: Any, db_urls: DbUrls) -> None:
    world = world_of([org(1, "DEFAULT"), org(2, "maison_atelier")])
    extra = f"[tenants.urls]\nMAISON_ATELIER = '{db_urls.tenant('elsewhere')}'\n"
    heartbeat_settings(world.config, db_urls, every="1m", extra=extra)
    stats = world.cli("outbox", "stats")
    assert stats.returncode == 0, stats.stdout + stats.stderr
    logged = [json.loads(line) for line in stats.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in logged if e["event"] == "tenant_code_case_mismatch"]
    assert len(warnings) == 1, stats.stderr
    assert warnings[0]["level"] == "warning"
    assert (warnings[0]["setting"], warnings[0]["key"], warnings[0]["tenants"]) == (
        "tenants.urls",
        "MAISON_ATELIER",
        ["maison_atelier"],
    )
    again = world.cli("outbox", "stats")  # once per process
    assert again.returncode == 0 and "tenant_code_case_mismatch" not in again.stderr
    settings = load_settings(world.config)
    tenants, problems = discover(settings, world.dbs.core)
    assert [t.code for t in tenants] == ["DEFAULT", "maison_atelier"] and problems == []
    assert settings.tenant_url("maison_atelier") == db_urls.tenant("maison_atelier")


# ---------------------------------------------------------------- resolve, for operators


def test_a_case_variant_is_refused_and_the_exact_code_uses_the_override(
    world_of: Any, db_urls: DbUrls
) -> None:
    override = db_urls.tenant("maison_override")
    world = world_of(
        [org(1, "DEFAULT"), org(2, "maison_atelier"), org(3, "closed", "inactive")],
        extra=f"[tenants.urls]\nmaison_atelier = '{override}'\n",
    )
    template = tenant_engine(world, db_urls.tenant("maison_atelier"))  # not the tenant's
    own = world.dbs.tenant("maison_atelier")
    add_dead_row(template)
    add_dead_row(own)
    engines = {
        "core": world.dbs.core,
        "DEFAULT": world.dbs.tenant("DEFAULT"),
        "override": own,
        "template": template,
    }
    before = table_digest(engines)

    hint = "tenant MAISON_ATELIER: not in core organization; did you mean 'maison_atelier'?"
    requeue = world.cli("outbox", "requeue", "--tenant", "MAISON_ATELIER", "--all-dead")
    assert (requeue.returncode, requeue.stdout.splitlines()) == (2, [hint]), requeue.stderr
    stats = world.cli("outbox", "stats", "--tenant", "MAISON_ATELIER")
    assert (stats.returncode, stats.stdout.splitlines()) == (2, [hint]), stats.stderr
    explained = world.cli("explain", SERIAL, "--tenant", "MAISON_ATELIER")
    assert (explained.returncode, explained.stdout.splitlines()) == (
        2,
        [f"bgworkers explain: {hint}"],
    ), explained.stderr
    assert table_digest(engines) == before  # nothing written anywhere

    tenant_found = resolve(world.settings, world.dbs.core, "maison_atelier")
    assert (tenant_found.id, tenant_found.code) == (2, "maison_atelier")
    assert world.settings.tenant_url(tenant_found.code) == override
    with pytest.raises(TenantError, match=r"^tenant closed: organization id 3 is not active"):
        resolve(world.settings, world.dbs.core, "closed")
    excluded = Settings(database=world.settings.database, tenants={"exclude": ["DEFAULT"]})
    with pytest.raises(TenantError, match=r"^tenant DEFAULT: not served with these settings"):
        resolve(excluded, world.dbs.core, "DEFAULT")

    stats = world.cli("outbox", "stats", "--tenant", "maison_atelier")
    assert stats.returncode == 0, stats.stdout
    assert stats.stdout.splitlines()[1].split()[:5] == ["maison_atelier", "0", "0", "0", "1"]
    explained = world.cli("explain", SERIAL, "--tenant", "maison_atelier", "--json")
    assert explained.returncode == 0, explained.stdout
    assert [
        r["id"] for r in json.loads(explained.stdout)["tenants"]["maison_atelier"]["outbox"]
    ] == [1]
    requeue = world.cli("outbox", "requeue", "--tenant", "maison_atelier", "--all-dead")
    assert requeue.returncode == 0, requeue.stdout
    assert "requeued 1 dead row(s)" in requeue.stdout
    assert outbox_statuses(own) == ["pending"]
    assert outbox_statuses(template) == ["dead"]
