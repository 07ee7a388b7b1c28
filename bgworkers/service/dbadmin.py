"""`bgworkers db init|upgrade|check`: schema work over core, coordination and tenant DBs.

Each function prints one line per database through `out` and returns the exit
status: 0 all good, 1 something is missing or failed (the other databases are
still processed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import MetaData, inspect
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import ensure_database, error_line
from bgworkers.db.dialects import missing_sqlite_file
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.schema import core, migrate, needs, tenant
from bgworkers.settings import Settings

Out = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """One database and what this project expects in it."""

    label: str
    raw_url: str
    erp: MetaData | None  # ERP tables (created by init as the ERP ships them)
    chains: tuple[migrate.Chain, ...]  # migration chains applied to it
    needs: tuple[needs.Need, ...]  # the tables the jobs use there


def core_targets(settings: Settings) -> list[Target]:
    db = settings.database
    if db.coordination_url in (None, db.core_url):
        return [
            Target(
                "core",
                db.core_url,
                core.metadata,
                ("coordination",),
                (*needs.CORE_NEEDS, *needs.OWN_NEEDS),
            )
        ]
    return [
        Target("core", db.core_url, core.metadata, (), needs.CORE_NEEDS),
        Target("coordination", db.coordination_url or "", None, ("coordination",), needs.OWN_NEEDS),
    ]


def tenant_target(settings: Settings, code: str) -> Target:
    baseline = tenant.define(MetaData(), erp_baseline=True)
    return Target(
        f"tenant {code}", settings.tenant_url(code), baseline, ("tenant",), needs.TENANT_NEEDS
    )


def _tenant_targets(
    settings: Settings, dbs: Databases, codes: list[str] | None, out: Out
) -> Iterator[Target]:
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


def upgrade(settings: Settings, dbs: Databases, code: str | None, dry_run: bool, out: Out) -> int:
    """Apply what each database still needs; dry run: print exactly those statements.

    The dry run's output is SQL as a whole: one `-- ` line per database and
    chain, then the statements `db upgrade` would run there, each ending in `;`.
    """
    status = 0
    targets = [t for t in core_targets(settings) if t.chains]
    for target in [*targets, *_tenant_targets(settings, dbs, [code] if code else None, out)]:
        try:
            engine = dbs.engine(target.raw_url)
            for chain in target.chains:
                plan = migrate.make_plan(engine, chain)
                label = _label(target, dbs)
                if not plan.todo:
                    out(f"{'-- ' if dry_run else ''}{label}: up to date, nothing to do")
                elif dry_run:
                    out(f"-- {label}: would apply {plan.label()}")
                    for stmt in plan.statements():
                        out(f"{stmt};")
                else:
                    migrate.apply(engine, plan)
                    out(f"{label}: applied {plan.label()}")
        except SQLAlchemyError as exc:
            status |= _failed(target, dbs, exc, out)
    return status


def check(settings: Settings, dbs: Databases, out: Out) -> int:
    """Report, per database, what is missing and what provides it; 1 if anything is."""
    status = 0
    targets = core_targets(settings)
    try:
        targets += list(_tenant_targets(settings, dbs, None, out))
    except SQLAlchemyError as exc:
        return _failed(targets[0], dbs, exc, out)
    for target in targets:
        url = dbs.url(target.raw_url)
        if missing_sqlite_file(url) is not None:
            out(f"{_label(target, dbs)}: MISSING database file")
            status = 1
            continue
        try:
            missing = _missing(target, dbs)
        except SQLAlchemyError as exc:
            status |= _failed(target, dbs, exc, out)
            continue
        if missing:
            status = 1
            out(f"{_label(target, dbs)}: MISSING {'; '.join(missing)}")
        else:
            out(f"{_label(target, dbs)}: ok")
    return status


def _missing(target: Target, dbs: Databases) -> list[str]:
    """What the ERP must provide (with the migration that does), then what
    `db upgrade` adds: exactly the changes its plan holds."""
    engine = dbs.engine(target.raw_url)
    out = []
    erp = needs.missing_required(engine, target.needs)
    by_fix: dict[str, list[str]] = {}
    for item in erp:
        name = item.split()[1].split(".")[0]
        column = item.split(".", 1)[1] if "." in item else None
        by_fix.setdefault(needs.BY_NAME[name].fix(column), []).append(item)
    out += [f"{'; '.join(items)} ({fix})" for fix, items in by_fix.items()]
    ours = [what for chain in target.chains for what in migrate.make_plan(engine, chain).missing()]
    if ours:
        out.append(f"{'; '.join(ours)} ({needs.UPGRADE})")
    return out
