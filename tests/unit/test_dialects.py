"""SQLite or MySQL/MariaDB, asked of URLs, engines and connections alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bgworkers.db.dialects import (
    is_mysql,
    is_sqlite,
    is_sqlite_dbapi,
    missing_sqlite_file,
    sqlite_file,
)


def test_kinds_of_url_engine_and_connection(tmp_path: Path) -> None:
    for url in ("mysql+mysqldb://u@h/db", "mariadb+mysqldb://u@h/db"):
        assert is_mysql(make_url(url)) and not is_sqlite(make_url(url))
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        assert is_sqlite(engine) and is_sqlite(conn) and is_sqlite(conn.dialect)
        assert not is_mysql(conn)
        assert is_sqlite_dbapi(conn.connection.dbapi_connection)
    engine.dispose()
    assert not is_sqlite_dbapi(object())
    raw = sqlite3.connect(":memory:")
    assert is_sqlite_dbapi(raw)
    raw.close()


def test_sqlite_files(tmp_path: Path) -> None:
    there = tmp_path / "there.db"
    there.touch()
    assert sqlite_file(make_url(f"sqlite:///{there}")) == str(there)
    assert sqlite_file(make_url("sqlite:///demo-data/core.db")) == "demo-data/core.db"
    for url in (
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:x.db?uri=true",
        "mysql+mysqldb://u@h/db",
    ):
        assert sqlite_file(make_url(url)) is None, url
    assert missing_sqlite_file(make_url(f"sqlite:///{there}")) is None
    assert missing_sqlite_file(make_url(f"sqlite:///{tmp_path / 'gone.db'}")) == str(
        tmp_path / "gone.db"
    )
