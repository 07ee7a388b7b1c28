"""Many tenants on one server: one pool, each checkout in its tenant's database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from daemon_helpers import heartbeat_settings
from helpers import DbUrls, MakeWorld

from bgworkers.engine.tenancy import Databases
from bgworkers.settings import load_settings

CODES = [f"atelier_{i:02d}" for i in range(24)]


def test_tenant_databases_share_one_pool_per_server(
    db_urls: DbUrls, tmp_path: Path, make_world: MakeWorld
) -> None:
    config = heartbeat_settings(tmp_path / "s.toml", db_urls)
    make_world(config, CODES)
    settings = load_settings(config)
    dbs = Databases(settings)
    try:
        for code in CODES * 2:
            engine = dbs.tenant(code)
            assert engine.url.database is not None and code in engine.url.database
            with engine.connect() as conn:
                if db_urls.backend == "mariadb":
                    assert (
                        conn.execute(sa.text("SELECT DATABASE()")).scalar() == engine.url.database
                    )
                    assert sa.inspect(conn).get_table_names() == []  # its own, empty
        with dbs.core.connect() as conn:
            assert "organization" in sa.inspect(conn).get_table_names()
        if db_urls.backend == "mariadb":
            assert len(dbs._servers) == 1
            pool = next(iter(dbs._servers.values())).pool
            assert pool.checkedin() <= settings.database.pool_size  # type: ignore[attr-defined]
        else:
            warm = [
                e for e in {id(e): e for e in dbs._engines.values()}.values() if e.pool.checkedin()
            ]  # type: ignore[attr-defined]
            assert len(warm) <= dbs.sqlite_warm
    finally:
        dbs.dispose()
