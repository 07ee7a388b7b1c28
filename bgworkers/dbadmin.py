"""`bgworkers db init|upgrade|check`: schema work over core, coordination and tenant DBs.

Each function prints one line per database through `out` and returns the exit
status: 0 all good, 1 something is missing or failed (the other databases are
still processed).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, MetaData, inspect
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import ensure_database, error_line, is_sqlite
from bgworkers.schema import core, migrate, own, tenant
from bgworkers.settings import Settings
from bgworkers.tenancy import Databases, discover

Out = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """One database and what this project expects in it."""

    label: str
    raw_url: str
    erp: MetaData | None  # ERP tables (created by init as the ERP ships them)
    chains: tuple[migrate.Chain, ...]  # migration chains applied to it
    expected: tuple[MetaData, ...]  # everything the jobs need there


def core_targets(settings: Settings) -> list[Target]:
    db = settings.database
    if db.coordination_url in (None, db.core_url):
        return [Target("core", db.core_url, core.metadata, ("coordination",),
                       (core.metadata, own.metadata))]
    return [
        Target("core", db.core_url, core.metadata, (), (core.metadata,)),
        Target("coordination", db.coordination_url or "", None, ("coordination",),
               (own.metadata,)),
    ]


def tenant_target(settings: Settings, code: str) -> Target:
    baseline = tenant.define(MetaData(), erp_baseline=True)
    return Target(f"tenant {code}", settings.tenant_url(code), baseline, ("tenant",),
                  (tenant.metadata,))


def _tenant_targets(settings: Settings, dbs: Databases, codes: list[str] | None,
                    out: Out) -> Iterator[Target]:
    tenants, problems = discover(settings, dbs.core)
    for problem in problems:
        out(f"tenant {problem.code}: {problem.error}")
    known = {t.code for t in tenants}
    for code in codes or []:
        if code not in known:
            out(f"tenant {code}: not an active tenant in core organization (skipped)")
    for t in tenants:
        if not codes or t.code in codes:
            yield tenant_target(settings, t.code)


def _label(target: Target, dbs: Databases) -> str:
    return f"{target.label} ({dbs.url(target.raw_url).render_as_string(hide_password=True)})"


def _failed(target: Target, dbs: Databases, exc: SQLAlchemyError, out: Out) -> int:
    reason = error_line(exc)
    out(f"{_label(target, dbs)}: FAILED: {reason}")
    return 1


def init(settings: Settings, dbs: Databases, codes: list[str] | None, out: Out) -> int:
    """Create the ERP schema on empty databases (demo, tests, benchmarks), then upgrade."""
    status = 0
    for target in core_targets(settings):
        status |= _init_one(target, dbs, out)
    if status:
        return status
    for target in _tenant_targets(settings, dbs, codes, out):
        status |= _init_one(target, dbs, out)
    return status


def _init_one(target: Target, dbs: Databases, out: Out) -> int:
    try:
        ensure_database(dbs.url(target.raw_url), dbs.settings.database)
        engine = dbs.engine(target.raw_url)
        existing = inspect(engine).get_table_names()
        if existing:
            out(f"{_label(target, dbs)}: already has {len(existing)} tables, left alone")
            return 0
        if target.erp is not None:
            target.erp.create_all(engine)
        applied = [rev for chain in target.chains for rev in migrate.upgrade(engine, chain)]
    except SQLAlchemyError as exc:
        return _failed(target, dbs, exc, out)
    tables = len(inspect(engine).get_table_names())
    out(f"{_label(target, dbs)}: created {tables} tables (migrations: {', '.join(applied)})")
    return 0


def upgrade(settings: Settings, dbs: Databases, code: str | None, dry_run: bool,
            out: Out) -> int:
    status = 0
    targets = [t for t in core_targets(settings) if t.chains]
    for target in [*targets, *_tenant_targets(settings, dbs, [code] if code else None, out)]:
        try:
            engine = dbs.engine(target.raw_url)
            for chain in target.chains:
                sql = io.StringIO() if dry_run else None
                applied = migrate.upgrade(engine, chain, sql)
                verb = "would apply" if dry_run else "applied"
                out(f"{_label(target, dbs)}: {verb} {', '.join(applied)}" if applied
                    else f"{_label(target, dbs)}: up to date, nothing to do")
                if sql is not None and applied:
                    out(sql.getvalue().rstrip())
        except SQLAlchemyError as exc:
            status |= _failed(target, dbs, exc, out)
    return status


def check(settings: Settings, dbs: Databases, out: Out) -> int:
    """Report missing tables and columns per database; 1 if anything is missing."""
    status = 0
    targets = core_targets(settings)
    try:
        targets += list(_tenant_targets(settings, dbs, None, out))
    except SQLAlchemyError as exc:
        return _failed(targets[0], dbs, exc, out)
    for target in targets:
        url = dbs.url(target.raw_url)
        if is_sqlite(url) and url.database and not Path(url.database).exists():
            out(f"{_label(target, dbs)}: MISSING database file")
            status = 1
            continue
        try:
            missing = _missing(dbs.engine(target.raw_url), target.expected)
        except SQLAlchemyError as exc:
            status |= _failed(target, dbs, exc, out)
            continue
        if missing:
            status = 1
            out(f"{_label(target, dbs)}: MISSING {'; '.join(missing)}")
        else:
            out(f"{_label(target, dbs)}: ok")
    return status


def _missing(engine: Engine, expected: tuple[MetaData, ...]) -> list[str]:
    insp = inspect(engine)
    present = set(insp.get_table_names())
    missing = []
    for metadata in expected:
        for name, table in metadata.tables.items():
            if name not in present:
                missing.append(f"table {name}")
                continue
            have = {c["name"] for c in insp.get_columns(name)}
            missing += [f"column {name}.{c.name}" for c in table.columns if c.name not in have]
    return missing
