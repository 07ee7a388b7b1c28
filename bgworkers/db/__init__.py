"""Engines and the few places where MySQL/MariaDB and SQLite differ at connection level."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Connection, Engine, create_engine, event, literal_column, text
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.pool import PoolProxiedConnection

from bgworkers.db import limits
from bgworkers.db.dialects import is_sqlite, sqlite_file
from bgworkers.db.types import PreciseDateTime


class PoolSettings(Protocol):
    """What engines are made with (`settings.DatabaseSettings` has it): db imports no
    settings, so that settings can use the dialect helpers."""

    @property
    def pool_size(self) -> int: ...
    @property
    def max_overflow(self) -> int: ...
    @property
    def pool_recycle(self) -> timedelta: ...
    @property
    def pool_timeout(self) -> timedelta: ...
    @property
    def connect_timeout(self) -> timedelta: ...


def error_line(exc: BaseException) -> str:
    """First line of a database error's own message (without SQLAlchemy's SQL and parameters)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else ""


def make_engine(
    url: URL,
    settings: PoolSettings,
    io_timeout: float | None = None,
    max_overflow: int | None = None,
) -> Engine:
    """An engine with its own pool: timeouts from settings, run limits on every checkout.

    The checkout hook of `limits` also checks that a pooled connection is alive.
    `io_timeout`: the client's read/write timeout in seconds (MySQL), a last
    resort against a server that stops answering; None for commands whose
    statements may rightly run long (db upgrade, demo-data).  `max_overflow`:
    instead of the setting (a pool shared by every database of a server).
    A MySQL URL without a database gives a server pool for `DatabaseEngine`s.
    """
    if is_sqlite(url):
        engine = create_engine(
            url, connect_args={"timeout": settings.connect_timeout.total_seconds()}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        connect_args = {"connect_timeout": int(settings.connect_timeout.total_seconds())}
        if io_timeout is not None:
            connect_args |= {
                "read_timeout": math.ceil(io_timeout),
                "write_timeout": math.ceil(io_timeout),
            }
        engine = create_engine(
            url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow if max_overflow is None else max_overflow,
            pool_recycle=int(settings.pool_recycle.total_seconds()),
            pool_timeout=settings.pool_timeout.total_seconds(),
            connect_args=connect_args,
        )
    limits.install(engine)
    return engine


def server_url(url: URL) -> URL | None:
    """The server a MySQL/MariaDB database URL is on (same driver, host, port, user,
    password, query: one pool serves them all); None for SQLite or a URL without
    a database, which get engines of their own."""
    if is_sqlite(url) or not url.database:
        return None
    return url._replace(database=None)  # set(database=None) would leave it


#: Key of a pooled connection's `info`: the database it is switched to.
_CURRENT_DATABASE = "bgw_database"


class DatabaseEngine(Engine):
    """One database of a server, on the server's shared pool.

    Every checkout is switched to this engine's database (`select_db`, one
    round trip, only when the connection was last used for another one), so a
    daemon holds as many connections per server as it runs statements at once,
    whatever the number of tenant databases.  `url` is the database's own URL
    (code reading `engine.url.database` gets it); the dialect is the server
    engine's, copied once it has met the server, with this database as its
    default schema (reflection, Alembic's version table).  `dispose()` leaves
    the shared pool alone: the server engine owns it.
    """

    def __init__(self, server: Engine, url: URL) -> None:
        super().__init__(server.pool, server.dialect, url, hide_parameters=server.hide_parameters)
        self._server = server
        self._database = str(url.database)
        self._own_dialect: Dialect | None = None
        limits.install_statement_check(self)

    @property
    def dialect(self) -> Dialect:
        own = self._own_dialect
        if own is None:
            own = self._copy_dialect()
        return own

    @dialect.setter
    def dialect(self, _value: Dialect) -> None:
        """Engine.__init__ sets it; the server's is read from `_server`."""

    def _copy_dialect(self) -> Dialect:
        server = self._server.dialect
        if getattr(server, "server_version_info", None) is None:
            try:  # the pool's first connection initializes the server's dialect
                self.pool.connect().close()
            except Exception:  # the connection attempt that follows reports it
                return server
        own = copy.copy(server)
        own.default_schema_name = self._database
        self._own_dialect = own
        return own

    def raw_connection(self) -> PoolProxiedConnection:
        conn = self.pool.connect()
        if conn.info.get(_CURRENT_DATABASE) != self._database:
            conn.info.pop(_CURRENT_DATABASE, None)
            try:
                conn.dbapi_connection.select_db(self._database)  # type: ignore[union-attr]
            except BaseException:
                conn.close()
                raise
            conn.info[_CURRENT_DATABASE] = self._database
        return conn

    def dispose(self, close: bool = True) -> None:
        """Nothing: the pool is the server's (`Databases.dispose` closes it)."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (dashboards, status) run beside one writer; busy_timeout
    # makes a second writer wait instead of failing at once.
    # Text that is not UTF-8 would make the sqlite3 module raise on fetch and fail
    # the whole read; decoded with surrogateescape, it arrives with its bad bytes as
    # lone surrogates, which the jobs detect and skip row by row (serials.key_problem).
    from functools import partial

    dbapi_conn.text_factory = partial(str, encoding="utf-8", errors="surrogateescape")
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def ensure_database(url: URL, settings: PoolSettings) -> bool:
    """Create the database named in the URL if missing (for SQLite: its directory).

    Returns True when a MySQL database was created.
    """
    if is_sqlite(url):
        if (name := sqlite_file(url)) is not None:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        return False
    if not url.database:
        return False
    server = make_engine(url.set(database=""), settings)
    try:
        with server.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"),
                {"n": url.database},
            ).first()
            if exists:
                return False
            quoted = server.dialect.identifier_preparer.quote_identifier(url.database)
            conn.execute(
                text(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            )
            return True
    finally:
        server.dispose()


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """`bind` itself when it is a connection (the caller's transaction), else a new
    transaction on the engine, committed on success."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


def db_now(bind: Engine | Connection, plus_seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database server's UTC clock (plus an offset) as a SQL expression.

    Leases compare times written by different hosts, so they use one clock: the
    database's. Microsecond precision on both dialects, in the text form that
    SQLAlchemy stores DATETIME in on SQLite.
    """
    micros = round(plus_seconds * 1_000_000)
    if is_sqlite(bind):
        sql = f"(strftime('%Y-%m-%d %H:%M:%f', 'now', '{micros / 1_000_000:+f} seconds') || '000')"
    else:
        sql = f"TIMESTAMPADD(MICROSECOND, {micros}, UTC_TIMESTAMP(6))"
    return literal_column(sql, type_=PreciseDateTime)
