"""The test harness itself: db_urls gives a usable private database on each backend."""

from __future__ import annotations

import tomllib
from pathlib import Path

import sqlalchemy as sa
from helpers import DbUrls, write_settings

from bgworkers.settings import load_settings


def test_core_database_answers(db_urls: DbUrls) -> None:
    engine = sa.create_engine(db_urls.core_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            if db_urls.backend == "mariadb":
                version = conn.execute(sa.text("SELECT VERSION()")).scalar_one()
                assert "MariaDB" in version
                charset = conn.execute(sa.text("SELECT @@character_set_database")).scalar_one()
                assert charset == "utf8mb4"
    finally:
        engine.dispose()


def test_tenant_url_is_a_template(db_urls: DbUrls) -> None:
    assert "{code_lower}" in db_urls.tenant_url
    assert db_urls.tenant("ACME") != db_urls.tenant("Other")
    assert "acme" in db_urls.tenant("ACME")
    if db_urls.backend == "mariadb":
        assert db_urls.core_url.endswith("?charset=utf8mb4")
        assert db_urls.tenant_url.endswith("?charset=utf8mb4")


def test_write_settings(db_urls: DbUrls, tmp_path: Path) -> None:
    path = write_settings(
        tmp_path / "settings.toml",
        db_urls,
        extra='[logging]\nlevel = "debug"\n\n[jobs.serial_outbox]\nevery = "1s"\n',
    )
    data = tomllib.loads(path.read_text())
    assert data["database"] == {"core_url": db_urls.core_url, "tenant_url": db_urls.tenant_url}
    assert data["logging"] == {"format": "json", "level": "debug"}
    assert data["jobs"]["serial_outbox"]["every"] == "1s"
    settings = load_settings(path)
    assert settings.database.core_url == db_urls.core_url
    assert settings.logging.format == "json"
