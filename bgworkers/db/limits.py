"""Runtime limits: every tenant run ends by its limit, whatever the database does.

A run executes inside `limited(seconds)`.  Three things hold it to the limit:

- the database session: each connection checked out during the run gets the
  time left as its statement and lock-wait limits (MariaDB `max_statement_time`,
  MySQL `max_execution_time`, both `lock_wait_timeout` and
  `innodb_lock_wait_timeout`; SQLite `busy_timeout`), so a long statement or a
  held lock ends with the server's own error;
- a check before every statement: once the limit has passed, the next
  statement raises `RunTimedOut` instead of being sent;
- a watchdog thread for what neither sees, a server that stopped answering:
  at the limit it shuts down the sockets of the run's MySQL connections (the
  blocked read returns at once, the server rolls the transaction back) and
  interrupts its SQLite connections.

The checkout statement that sets the limits doubles as the pool's liveness
check (a dead pooled connection is replaced, as `pool_pre_ping` would).
Outside any run (CLI commands such as `db upgrade`, whose statements may
rightly run long) a connection has the server's own settings again.  The
daemon's client read/write timeouts (`db.make_engine`) are a last resort.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, event, exc

from bgworkers.db.dialects import is_sqlite_dbapi

#: SQLite busy timeout outside a run, in milliseconds (a writer waits that long for a lock).
SQLITE_BUSY_MS = 30_000
#: How often the watchdog looks for runs past their limit.
WATCH_EVERY = 0.1
#: A server error this close to the limit is the limit at work (whole-second lock
#: waits, clocks read at slightly different moments).
EARLY = 0.05
#: Characters of the statement quoted in a timeout error.
STATEMENT_CHARS = 160


class RunTimedOut(Exception):
    """The run passed its limit; the message names the limit and the statement it was in."""


@dataclass(eq=False)
class Limit:
    """The time limit of one run, and what it is doing."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    statement: str | None = None  # the last statement sent (raw text)
    #: DBAPI connections checked out -> how the watchdog cuts them
    connections: dict[Any, Callable[[], None]] = field(default_factory=dict)
    fired: bool = False  # the watchdog cut its connections

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline - EARLY

    def error(self) -> str:
        text = f"timed out after {self.seconds:g} s"
        if self.statement:
            flat = " ".join(self.statement.split())
            if len(flat) > STATEMENT_CHARS:
                flat = flat[: STATEMENT_CHARS - 3] + "..."
            text += f" in: {flat}"
        return text

    def check(self) -> None:
        if self.expired():
            raise RunTimedOut(self.error())


_current: ContextVar[Limit | None] = ContextVar("bgworkers_limit", default=None)


@contextmanager
def limited(seconds: float) -> Iterator[Limit]:
    """Run the block under a limit of `seconds` (nested blocks get their own)."""
    limit = Limit(seconds)
    token = _current.set(limit)
    _watchdog.add(limit)
    try:
        yield limit
    finally:
        _watchdog.discard(limit)
        _current.reset(token)


def check() -> None:
    """Raise RunTimedOut when the current run is past its limit (for loops without SQL)."""
    limit = _current.get()
    if limit is not None:
        limit.check()


def cut_all() -> None:
    """End every run now, as if its limit had passed (a shutdown giving up on them)."""
    _watchdog.fire(everyone=True)


# ------------------------------------------------------------------ engine hooks


def install(engine: Engine) -> None:
    """Apply limits to every connection of `engine` (call once per pool, when it is
    made: the connect, checkout and checkin hooks belong to its dialect and pool)."""
    event.listen(engine, "do_connect", _on_connect)
    event.listen(engine, "checkout", _on_checkout)
    event.listen(engine, "checkin", _on_checkin)
    install_statement_check(engine)


def install_statement_check(engine: Engine) -> None:
    """The check before every statement, for an engine on a pool that has the others
    (`db.DatabaseEngine`: one database of a shared server pool)."""
    event.listen(engine, "before_cursor_execute", _before_execute)


def session_limits(seconds: float, mariadb: bool) -> str:
    """The SET statement that bounds statements and lock waits of a MySQL session."""
    whole = max(1, math.ceil(seconds))  # both lock waits take whole seconds
    statement = (
        f"max_statement_time = {max(seconds, 0.001):.3f}"
        if mariadb
        else f"max_execution_time = {max(1, math.ceil(seconds * 1000))}"
    )
    return (
        f"SET SESSION {statement}, lock_wait_timeout = {whole}, innodb_lock_wait_timeout = {whole}"
    )


def _on_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    """A connection opened during a run waits for the server no longer than the run may."""
    limit = _current.get()
    if limit is not None and "connect_timeout" in cparams:
        cparams["connect_timeout"] = max(
            1, min(int(cparams["connect_timeout"]), math.ceil(limit.remaining()))
        )


def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    limit = _current.get()
    if limit is not None:
        seconds = limit.remaining()
        if seconds <= 0:
            raise RunTimedOut(limit.error())
        limit.connections[dbapi_conn] = _cutter(dbapi_conn)
        record.info["bgw_limit"] = limit
    limited_before = record.info.pop("bgw_limited", False)
    try:
        if is_sqlite_dbapi(dbapi_conn):
            busy = SQLITE_BUSY_MS if limit is None else math.ceil(seconds * 1000)
            dbapi_conn.execute(f"PRAGMA busy_timeout = {busy}")
        elif limit is not None:
            mariadb = record.info.get("bgw_mariadb")
            if mariadb is None:
                mariadb = "mariadb" in dbapi_conn.get_server_info().lower()
                record.info["bgw_mariadb"] = mariadb
            _execute(dbapi_conn, session_limits(seconds, mariadb))
            record.info["bgw_limited"] = True
        elif limited_before:  # back to the server's own settings
            _execute(dbapi_conn, RESET_SESSION_LIMITS[record.info["bgw_mariadb"]])
        else:
            dbapi_conn.ping()
    except Exception as error:
        _on_checkin(dbapi_conn, record)
        if limit is not None and limit.expired():
            raise RunTimedOut(limit.error()) from error
        # A connection that cannot take the statement is dead: the pool replaces it.
        raise exc.DisconnectionError(f"connection check failed: {error}") from error


def _execute(dbapi_conn: Any, statement: str) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


RESET_SESSION_LIMITS = {
    mariadb: f"SET SESSION {'max_statement_time' if mariadb else 'max_execution_time'} = DEFAULT, "
    "lock_wait_timeout = DEFAULT, innodb_lock_wait_timeout = DEFAULT"
    for mariadb in (True, False)
}


def _on_checkin(dbapi_conn: Any, record: Any) -> None:
    limit = record.info.pop("bgw_limit", None)
    if limit is not None:
        limit.connections.pop(dbapi_conn, None)


def _before_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    limit = _current.get()
    if limit is not None:
        limit.check()
        limit.statement = statement


# ------------------------------------------------------------------ watchdog


def _cutter(dbapi_conn: Any) -> Callable[[], None]:
    """How to end, from another thread, whatever `dbapi_conn` waits for.

    SQLite: interrupt the connection.  MySQL: shut down its socket, found by the
    descriptor read now (the driver refuses calls from a second thread) and
    checked again by inode when used, so a descriptor number reused after the
    connection closed is never touched.
    """
    if is_sqlite_dbapi(dbapi_conn):
        return cast(Callable[[], None], dbapi_conn.interrupt)
    fd = dbapi_conn.fileno()
    inode = os.fstat(fd).st_ino

    def cut() -> None:
        if os.fstat(fd).st_ino != inode:
            return
        sock = socket.socket(fileno=fd)
        try:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()  # the descriptor stays the driver's

    return cut


class _Watchdog:
    """One thread that cuts the connections of runs past their limit."""

    def __init__(self) -> None:
        self._limits: set[Limit] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, limit: Limit) -> None:
        with self._lock:
            self._limits.add(limit)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="run-limits", daemon=True)
                self._thread.start()

    def discard(self, limit: Limit) -> None:
        with self._lock:
            self._limits.discard(limit)

    def _loop(self) -> None:
        while True:
            time.sleep(WATCH_EVERY)
            self.fire()

    def fire(self, everyone: bool = False) -> None:
        """Cut the connections of the runs past their limit (or of every run)."""
        now = time.monotonic()
        with self._lock:
            due = [
                lim for lim in self._limits if not lim.fired and (everyone or now >= lim.deadline)
            ]
            for limit in due:
                limit.fired = True
                for cut in list(limit.connections.values()):
                    with contextlib.suppress(Exception):  # the watchdog never dies
                        cut()


_watchdog = _Watchdog()
