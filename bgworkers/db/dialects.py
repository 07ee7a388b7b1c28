"""Which database a URL, engine, connection or dialect is: SQLite or MySQL/MariaDB.

The code differs between them in a few places (statements, session settings,
files on disk); each asks here rather than comparing dialect names itself.  It
imports nothing of bgworkers, so that settings can use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, Dialect

SQLITE = "sqlite"
#: SQLAlchemy's names of MySQL and MariaDB (`mysql+mysqldb://` is "mysql" on either).
MYSQL = ("mysql", "mariadb")

Target = URL | Engine | Connection | Dialect


def backend(target: Target) -> str:
    """The dialect name: "sqlite", "mysql", "mariadb", ..."""
    if isinstance(target, URL):
        return target.get_backend_name()
    if isinstance(target, Engine | Connection):
        return target.dialect.name
    return target.name


def is_sqlite(target: Target) -> bool:
    return backend(target) == SQLITE


def is_mysql(target: Target) -> bool:
    """MySQL or MariaDB."""
    return backend(target) in MYSQL


def is_mariadb(dialect: Dialect) -> bool:
    """MariaDB rather than MySQL (known once the dialect has met the server)."""
    return is_mysql(dialect) and bool(getattr(dialect, "is_mariadb", False))


def sqlite_file(url: URL) -> str | None:
    """The file a SQLite URL names; None for another database, an in-memory one or a
    `file:` URI."""
    name = url.database
    if not is_sqlite(url) or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


def missing_sqlite_file(url: URL) -> str | None:
    """The file a SQLite URL names when there is none (connecting would create it empty)."""
    name = sqlite_file(url)
    return name if name is not None and not Path(name).exists() else None


def is_sqlite_dbapi(dbapi_conn: Any) -> bool:
    """Whether a raw DBAPI connection (as pool events get it) is SQLite's."""
    return type(dbapi_conn).__module__.startswith("sqlite3")
