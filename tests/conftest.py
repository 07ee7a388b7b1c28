"""Shared fixtures: a throwaway MariaDB server and per-test database URLs.

- `mariadb_server_url` (session): `mysql+mysqldb://root@127.0.0.1:PORT`, no
  database.  Taken from BGWORKERS_TEST_MARIADB_URL if set, else a server is
  started with tests/harness/mariadb.sh and stopped at the end of the session.
  No mariadbd: the test is skipped, or fails when CI=true.
- `db_urls` (function, parametrized sqlite / mariadb): a `DbUrls` whose
  databases are private to the test.  Select one backend with
  `-m mariadb` / `-m "not mariadb"` or `-k sqlite`.
- `own_mariadb` (function): a server of the test's own, which it may stop and
  start again (`OwnServer`); always started here, whatever
  BGWORKERS_TEST_MARIADB_URL says.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from daemon_helpers import OwnServer
from helpers import DbUrls, require
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

HARNESS = Path(__file__).parent / "harness" / "mariadb.sh"
MARIADB_URL_ENV = "BGWORKERS_TEST_MARIADB_URL"
START_TIMEOUT = 120  # seconds, for mariadb-install-db + first start on a slow machine
STOP_TIMEOUT = 60


def _mariadbd_available() -> bool:
    return any(
        shutil.which(name) or Path("/usr/sbin", name).exists() for name in ("mariadbd", "mysqld")
    )


def _server_engine(server_url: str) -> sa.Engine:
    return sa.create_engine(server_url, poolclass=NullPool)


@pytest.fixture(scope="session")
def mariadb_server_url() -> Iterator[str]:
    """URL of a MariaDB server where root may create and drop databases."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError as exc:
        require(False, f"the mysqlclient driver is not importable: {exc}")

    configured = os.environ.get(MARIADB_URL_ENV, "").strip()
    if configured:
        url = make_url(configured).set(database=None)
        yield url.render_as_string(hide_password=False)
        return

    require(_mariadbd_available(), "mariadbd not found (apt-get install mariadb-server)")
    # A short path under /tmp: the unix socket path must stay under ~100 bytes.
    base = Path(tempfile.mkdtemp(prefix="bgw-mariadb-", dir="/tmp"))
    env = dict(os.environ, MARIADB_OWNER_PID=str(os.getpid()))
    try:
        proc = subprocess.run(
            ["bash", str(HARNESS), "start", str(base)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        subprocess.run(
            ["bash", str(HARNESS), "stop", str(base), "--keep"], timeout=STOP_TIMEOUT, check=False
        )
        pytest.fail(
            f"MariaDB did not start within {START_TIMEOUT}s "
            f"(left in {base} for inspection): {exc.stderr!r}",
            pytrace=False,
        )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(
            f"could not start MariaDB (rc={proc.returncode}):\n{proc.stderr}", pytrace=False
        )
    try:
        yield lines[-1]
    finally:
        subprocess.run(["bash", str(HARNESS), "stop", str(base)], timeout=STOP_TIMEOUT, check=False)


@pytest.fixture
def own_mariadb() -> Iterator[OwnServer]:
    """A throwaway MariaDB of this test alone: the test may stop and restart it."""
    require(_mariadbd_available(), "mariadbd not found (apt-get install mariadb-server)")
    server = OwnServer(Path(tempfile.mkdtemp(prefix="bgw-own-", dir="/tmp")))
    try:
        server.start()
        yield server
    finally:
        subprocess.run(["bash", str(HARNESS), "stop", str(server.base)], timeout=STOP_TIMEOUT,
                       check=False)


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


def _mariadb_urls(server_url: str) -> Iterator[DbUrls]:
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


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbUrls]:
    """Private core + tenant database URLs for one test, on SQLite and on MariaDB."""
    if request.param == "sqlite":
        yield DbUrls(
            backend="sqlite",
            core_url=f"sqlite:///{tmp_path}/core.db",
            tenant_url=f"sqlite:///{tmp_path}/tenant_{{code_lower}}.db",
        )
        return
    server_url = request.getfixturevalue("mariadb_server_url")
    yield from _mariadb_urls(server_url)
