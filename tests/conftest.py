"""Shared fixtures: a throwaway MariaDB server, per-test database URLs, tenant worlds.

- `mariadb_server_url` (session): `mysql+mysqldb://root@127.0.0.1:PORT`, no
  database.  Taken from BGWORKERS_TEST_MARIADB_URL if set, else a server is
  started (bgworkers.demo.harness) and stopped at the end of the run; with xdist the
  first worker to need it starts one server for all workers (each test has
  databases of its own on it).  No mariadbd: the test is skipped, or fails when CI=true.
- `db_urls` (function, parametrized sqlite / mariadb): a `DbUrls` whose
  databases are private to the test.  Select one backend with
  `-m mariadb` / `-m "not mariadb"` or `-k sqlite`.  `module_db_urls`: the same,
  shared by the tests of a module (for data they only read).
- `make_world` (function): `build_world` for this test, its databases disposed after it.
- `own_mariadb` (function): a server of the test's own, which it may stop and
  start again (`bgworkers.demo.harness.MariaDB`); always started here, whatever
  BGWORKERS_TEST_MARIADB_URL says.

Every test starts with the logging configuration as the run found it (a command run
in-process configures logging as the daemon would).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import DbUrls, World, build_world, require
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bgworkers.demo.harness import MariaDB, MariaDBError
from bgworkers.engine import logs

MARIADB_URL_ENV = "BGWORKERS_TEST_MARIADB_URL"
#: In the run's shared temporary directory, for the workers of one xdist run.
SHARED_SERVER = "mariadb-server"


def _mariadbd_available() -> bool:
    return any(
        shutil.which(name) or Path("/usr/sbin", name).exists() for name in ("mariadbd", "mysqld")
    )


def _server_engine(server_url: str) -> sa.Engine:
    return sa.create_engine(server_url, poolclass=NullPool)


def _start(server: MariaDB) -> str:
    try:
        return server.start()
    except MariaDBError as exc:
        pytest.fail(f"could not start MariaDB: {exc}", pytrace=False)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every worker of this xdist run sees (their base temps' parent)."""
    return tmp_path_factory.getbasetemp().parent


@pytest.fixture(scope="session")
def mariadb_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a MariaDB server where root may create and drop databases."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError as exc:
        require(False, f"the mysqlclient driver is not importable: {exc}")

    configured = os.environ.get(MARIADB_URL_ENV, "").strip()
    if configured:
        yield make_url(configured).set(database=None).render_as_string(hide_password=False)
        return

    require(_mariadbd_available(), "mariadbd not found (apt-get install mariadb-server)")
    if "PYTEST_XDIST_WORKER" not in os.environ:
        server = MariaDB(owner_pid=os.getpid(), prefix="bgw-mariadb-")
        try:
            yield _start(server)
        finally:
            server.remove()
        return
    # One server for every worker, started by the first that needs it and removed by
    # the controller at the end of the run (or by the script's watcher when it dies).
    shared = _shared_dir(tmp_path_factory)
    with (shared / f"{SHARED_SERVER}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = shared / f"{SHARED_SERVER}.base"
        if state.exists():
            url = MariaDB(Path(state.read_text())).url
        else:
            server = MariaDB(owner_pid=os.getppid(), prefix="bgw-mariadb-")
            url = _start(server)
            state.write_text(str(server.base))
    yield url


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller removes the server its workers shared."""
    if "PYTEST_XDIST_WORKER" in os.environ or not hasattr(session.config, "_tmp_path_factory"):
        return
    state = session.config._tmp_path_factory.getbasetemp() / f"{SHARED_SERVER}.base"
    if state.exists():
        MariaDB(Path(state.read_text())).remove()
        state.unlink()


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A throwaway MariaDB of this test alone: the test may stop and restart it."""
    require(_mariadbd_available(), "mariadbd not found (apt-get install mariadb-server)")
    server = MariaDB(owner_pid=os.getpid(), prefix="bgw-own-")
    try:
        _start(server)
        yield server
    finally:
        server.remove()


def _drop_databases(server_url: str, prefix: str) -> None:
    """Drop every database named prefix*, first ending sessions still using them."""
    engine = _server_engine(server_url)
    try:
        with engine.connect() as conn:
            names = [
                n for n in conn.execute(sa.text("SHOW DATABASES")).scalars() if n.startswith(prefix)
            ]
            if not names:
                return
            # Sessions left open by the code under test would block DROP on a
            # metadata lock; they belong to this test, so end them.
            own = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
            rows = conn.execute(
                sa.text("SELECT id, db FROM information_schema.processlist WHERE db IS NOT NULL")
            ).all()
            for conn_id, db in rows:
                if db in names and conn_id != own:
                    with contextlib.suppress(sa.exc.DBAPIError):  # already gone
                        conn.execute(sa.text(f"KILL CONNECTION {int(conn_id)}"))
            conn.execute(sa.text("SET SESSION lock_wait_timeout = 30"))
            for name in names:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        engine.dispose()


def mariadb_urls(server_url: str) -> Iterator[DbUrls]:
    """Core (created) and tenant URLs of databases of their own on the server, dropped
    when the generator is closed."""
    prefix = f"bgw_{uuid.uuid4().hex[:8]}_"
    server = make_url(server_url)
    token = "BGWDATABASENAME"
    template = (
        server.set(database=token)
        .update_query_dict({"charset": "utf8mb4"})
        .render_as_string(hide_password=False)
    )
    core_db = f"{prefix}core"
    urls = DbUrls(
        backend="mariadb",
        core_url=template.replace(token, core_db),
        tenant_url=template.replace(token, f"{prefix}t_{{code_lower}}"),
    )
    engine = _server_engine(server_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"CREATE DATABASE `{core_db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
            )
    finally:
        engine.dispose()
    try:
        yield urls
    finally:
        _drop_databases(server_url, prefix)


def sqlite_urls(directory: Path) -> DbUrls:
    return DbUrls(
        backend="sqlite",
        core_url=f"sqlite:///{directory}/core.db",
        tenant_url=f"sqlite:///{directory}/tenant_{{code_lower}}.db",
    )


BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(params=BACKENDS)
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbUrls]:
    """Private core + tenant database URLs for one test, on SQLite and on MariaDB."""
    if request.param == "sqlite":
        yield sqlite_urls(tmp_path)
        return
    yield from mariadb_urls(request.getfixturevalue("mariadb_server_url"))


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_urls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DbUrls]:
    """Core + tenant database URLs shared by the tests of one module, on both backends."""
    if request.param == "sqlite":
        yield sqlite_urls(tmp_path_factory.mktemp("module-db"))
        return
    yield from mariadb_urls(request.getfixturevalue("mariadb_server_url"))


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    """`build_world(config, orgs, ...)` for this test; the worlds' databases are disposed
    (their connections closed) after it."""
    made: list[World] = []

    def make(config: Path, *args: Any, **kwargs: Any) -> World:
        world = build_world(config, *args, **kwargs)
        made.append(world)
        return world

    yield make
    for world in made:
        world.dbs.dispose()


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Undo what a test did to logging: level, format, stream, secrets, handlers."""
    state = dict(vars(logs._state))
    chain = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    logs.clear_context()
    vars(logs._state).update(state)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.configure(**chain)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests first: they are the longest, and mostly wait (with xdist,
    the others fill the workers meanwhile)."""
    items.sort(key=lambda item: "/e2e/" not in f"/{item.nodeid}")
