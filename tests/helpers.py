"""Small helpers shared by the test suites (importable as `helpers`: tests/ is on sys.path):
prerequisites, database URLs and settings files, tenant worlds, the command line in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bgworkers import cli
from bgworkers.db import ensure_database
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.service import dbadmin
from bgworkers.settings import Settings, load_settings


def require(condition: bool, reason: str) -> None:
    """Skip the test unless *condition* holds; under CI (CI=true) fail instead.

    A test that needs root, journald or MariaDB may be skipped on a laptop, but
    in CI a missing prerequisite is a broken pipeline, not a pass.
    """
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class DbUrls:
    """Database URLs private to one test: a core URL and a tenant URL template."""

    backend: str  # "sqlite" or "mariadb"
    core_url: str
    tenant_url: str  # contains {code_lower}

    def tenant(self, code: str) -> str:
        return self.tenant_url.format(code=code, code_lower=code.lower())


def write_settings(path: Path, db_urls: DbUrls, extra: str = "") -> Path:
    """Write a settings.toml using *db_urls* with JSON logs; *extra* TOML is merged in."""
    data: dict[str, Any] = {
        "database": {"core_url": db_urls.core_url, "tenant_url": db_urls.tenant_url},
        "logging": {"format": "json", "level": "info"},
    }
    _merge(data, tomllib.loads(extra))
    path.write_text(_dump_toml(data))
    return path


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Tables of scalars and lists (all settings.toml needs); JSON strings are TOML strings."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    text = "\n".join(out) + ("\n\n" if out else "")
    for key, value in data.items():
        if isinstance(value, dict):
            text += _dump_toml(value, f"{prefix}.{key}" if prefix else key)
    return text


# ------------------------------------------------------------------ the command line


@dataclass(frozen=True)
class CliResult:
    """What a command line gave: exit status, standard output, standard error."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """os.environ with `changes` (None: unset) for the block, as it was afterwards."""
    before = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bgworkers(
    *args: str, cwd: Path | None = None, env: Mapping[str, str | None] | None = None
) -> CliResult:
    """`bgworkers ARGS` in this process (`bgworkers.cli.main`), from `cwd` with the
    environment changed by `env`; its output captured, logs included."""
    out, err = io.StringIO(), io.StringIO()
    with (
        environment(env or {}),
        contextlib.chdir(cwd or Path.cwd()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(list(args))
    return CliResult(code, out.getvalue(), err.getvalue())


# ------------------------------------------------------------------ tenant worlds


@dataclass
class World:
    """A core database and its tenants, built from one settings file."""

    config: Path
    settings: Settings
    dbs: Databases
    lines: list[str] = field(default_factory=list)  # what building it said (demo data)

    def tenant(self, code: str) -> sa.Engine:
        return self.dbs.tenant(code)

    def cli(self, *args: str, env: Mapping[str, str | None] | None = None) -> CliResult:
        """`bgworkers ARGS --config <this world's settings>`, in this process."""
        return bgworkers(*args, "--config", str(self.config), env=env)


Org = str | Mapping[str, Any]
MakeWorld = Callable[..., World]  # the make_world fixture: build_world for one test


def build_world(
    config: Path,
    orgs: Sequence[Org] = (),
    *,
    erp_schema: bool = False,
    only: Sequence[str] | None = None,
    organization: Callable[[sa.Engine], None] | None = None,
    demo: Mapping[str, Any] | None = None,
) -> World:
    """The one way tests build tenants from a settings file.

    `bgworkers db init` of core (ERP and coordination tables); then `organization`, when
    given, may reshape that table; then one organization per entry of `orgs`: a code
    (id 1, 2, ..., active, named after the code) or a whole row, columns as given.  Each
    tenant served (of those named in `only`, if given) then gets its database: with the
    ERP schema (`db init` again) when `erp_schema`, else empty but answering (enough for
    heartbeat).

    With `demo`, `bgworkers demo-data` with those arguments builds everything instead
    (its lines in `World.lines`).  The caller disposes `World.dbs`.
    """
    settings = load_settings(config)
    world = World(config, settings, Databases(settings))
    quiet: Callable[[str], None] = lambda _: None  # noqa: E731
    try:
        if demo is not None:
            from bgworkers.demo import generate

            assert not orgs and not erp_schema, "demo data brings its own organizations"
            status = generate(settings, world.dbs, **demo, out=world.lines.append)
            assert status == 0, "\n".join(world.lines)
            return world
        assert dbadmin.init(settings, world.dbs, None, quiet) == 0
        if organization is not None:
            organization(world.dbs.core)
        rows = [
            {"id_org": i, "code": org, "name": org, "status": "active"}
            if isinstance(org, str)
            else dict(org)
            for i, org in enumerate(orgs, start=1)
        ]
        with world.dbs.core.begin() as conn:
            for row in rows:  # only the columns given: the others keep their defaults
                table = sa.table("organization", *(sa.column(name) for name in row))
                conn.execute(table.insert().values(row))
        if erp_schema:
            assert dbadmin.init(settings, world.dbs, list(only) if only else None, quiet) == 0
        else:
            for tenant in discover(settings, world.dbs.core)[0]:
                if only is not None and tenant.code not in only:
                    continue
                ensure_database(world.dbs.url(settings.tenant_url(tenant.code)), settings.database)
                with world.dbs.tenant(tenant.code).connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
    except BaseException:
        world.dbs.dispose()
        raise
    return world
