"""`bgworkers demo-data`: organizations, schema, then each tenant's synthetic rows."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from random import Random

from sqlalchemy import Engine, Table, func, inspect, select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from bgworkers.db import ensure_database
from bgworkers.db.dialects import is_mysql, is_sqlite, sqlite_file
from bgworkers.demo.catalog import (
    PROFILE,
    GraphSpec,
    Org,
    Profile,
    graph_specs,
    organizations,
    team_specs,
)
from bgworkers.demo.columns import CORE_COLUMNS, TENANT_COLUMNS
from bgworkers.demo.plan import Plan, PlanError, make_plan
from bgworkers.demo.stamps import Stamps, anchor, epoch
from bgworkers.demo.tenant import TenantGenerator, TenantRun
from bgworkers.demo.writer import BulkWriter, WriterError
from bgworkers.engine.tenancy import Databases, is_active
from bgworkers.schema import core, own, tenant
from bgworkers.service import dbadmin
from bgworkers.settings import Settings, TenantsSettings, tenant_code_problem

Out = Callable[[str], None]
_DATA_TABLES = ("job_ticket", "job_ticket_serial", "flow_token")


class Refused(Exception):
    """The databases hold data and --reset was not given."""


class Failed(Exception):
    """A step failed; what went wrong was already printed."""


def generate(
    settings: Settings,
    dbs: Databases,
    *,
    tenants: int = 2,
    scale: float = 1.0,
    seed: int = 1,
    at: datetime | None = None,
    reset: bool = False,
    out: Callable[[str], None] = print,
    profile: Profile = PROFILE,
    progress_every: float = 5.0,
) -> int:
    """Fill core and every demo tenant database; 0 ok, 1 failed, 2 refused or bad arguments.

    `at` (naive UTC, default now truncated to the minute) anchors every
    timestamp: the same seed and `at` give the same rows.  Prints one line per
    tenant with the rows written and one with the exact planted counts, and while
    it runs long a progress line every `progress_every` seconds (none when fast).
    """
    if tenants < 1 or not scale > 0:
        out("demo-data: --tenants must be at least 1 and --scale greater than 0")
        return 2
    moment = anchor(at)
    orgs = organizations(tenants)
    active = [org for org in orgs if is_active(org.status)]
    graphs = graph_specs(profile.graphs, profile.nodes)
    plans: list[tuple[Random, Plan]] = []
    for org in active:  # plan first: a profile that cannot work touches no database
        rng = Random(f"bgworkers-demo:{seed}:{org.code}")
        try:
            plans.append((rng, make_plan(rng, profile, scale, epoch(moment), graphs)))
        except PlanError as exc:
            out(f"demo-data: tenant {org.code}: {exc}")
            return 2
    # Every demo tenant gets data, whatever [tenants] include/exclude say.
    demo = settings.model_copy(
        update={"tenants": TenantsSettings(urls=dict(settings.tenants.urls))}
    )
    try:
        _prepare(demo, dbs, orgs, reset, out)
    except Refused as exc:
        out(f"demo-data: refused: {exc}")
        return 2
    except Failed:
        return 1
    except SQLAlchemyError as exc:
        out(f"demo-data: FAILED: {_reason(exc)}")
        return 1
    if dbadmin.init(demo, dbs, [org.code for org in active], _not_core(out)):
        return 1
    out(
        f"demo-data: at {moment:%Y-%m-%d %H:%M} UTC, seed {seed}, scale {scale:g}; "
        f"organizations: "
        + ", ".join(f"{o.code} (id {o.id}, {o.serial_code}, status {o.status!r})" for o in orgs)
        + f"; {orgs[-1].code} is inactive and gets no database"
    )
    registry_id, total, started = 1, 0, time.perf_counter()
    progress = _Progress(out, len(active), progress_every)
    for index, (org, (rng, plan)) in enumerate(zip(active, plans, strict=True)):
        other = active[(index + 1) % len(active)] if len(active) > 1 else orgs[-1]
        progress.tenant(index, org.code, total)
        try:
            result = _tenant(
                demo, dbs, org, other, profile, rng, plan, graphs, registry_id, progress.writers
            )
        except (SQLAlchemyError, WriterError) as exc:
            progress.stop()
            out(f"demo-data: tenant {org.code}: FAILED: {_reason(exc)}")
            return 1
        finally:
            progress.writers.clear()
        registry_id += result.rows["serial_registry"]
        total += sum(result.rows.values())
        rows = " ".join(f"{name}={n}" for name, n in result.rows.items())
        out(
            f"demo-data: tenant {org.code} ({org.serial_code}) rows: {rows} "
            f"({sum(result.rows.values()):,} rows in {result.seconds:.1f} s)"
        )
        planted = " ".join(f"{name}={n}" for name, n in result.planted.items())
        out(f"demo-data: tenant {org.code} planted: {planted}")
    progress.stop()
    out(
        f"demo-data: done: {len(active)} tenant(s), {total:,} rows in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def _tenant(
    settings: Settings,
    dbs: Databases,
    org: Org,
    other: Org,
    profile: Profile,
    rng: Random,
    plan: Plan,
    graphs: list[GraphSpec],
    registry_id: int,
    writers: list[BulkWriter] | None = None,
) -> TenantRun:
    started = time.perf_counter()
    tz = settings.erp.tz
    tenant_engine, core_engine = dbs.tenant(org.code), dbs.core
    tw = BulkWriter(tenant_engine, TENANT_COLUMNS, profile.chunk_rows)
    cw = BulkWriter(core_engine, CORE_COLUMNS, profile.chunk_rows)
    if writers is not None:
        writers.extend((tw, cw))  # for the progress line
    collecting = gc.isenabled()
    gc.disable()  # millions of tuples, no cycles: the cycle collector would only slow us down
    try:
        gen = TenantGenerator(
            org,
            other,
            profile,
            plan,
            rng,
            graphs,
            team_specs(profile.teams),
            Stamps(tz, _sqlite(tenant_engine)),
            Stamps(tz, _sqlite(core_engine)),
            tw,
            cw,
            registry_id,
        )
        gen.master_data()
        gen.tickets()
        planted = gen.check()
        tw.close()
        cw.close()
    except BaseException:
        tw.abort()
        cw.abort()
        raise
    finally:
        if collecting:
            gc.enable()
    rows = {**tw.counts, **cw.counts}
    return TenantRun(org.code, rows, planted, time.perf_counter() - started)


class _Progress:
    """A line every `every` seconds while generation runs: tenants done, rows written."""

    def __init__(self, out: Out, tenants: int, every: float) -> None:
        self.out, self.tenants, self.every = out, tenants, every
        self.started = time.perf_counter()
        self.index, self.code, self.done_rows = 0, "", 0
        self.writers: list[BulkWriter] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._thread.start()

    def tenant(self, index: int, code: str, done_rows: int) -> None:
        self.index, self.code, self.done_rows = index, code, done_rows

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            current = sum(n for w in list(self.writers) for n in list(w.counts.values()))
            self.out(
                f"demo-data: progress: {self.index}/{self.tenants} tenants done, "
                f"{self.done_rows + current:,} rows written, now {self.code}, "
                f"{time.perf_counter() - self.started:.0f} s"
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- safety and reset


def _prepare(settings: Settings, dbs: Databases, orgs: list[Org], reset: bool, out: Out) -> None:
    """Refuse to overwrite data, or (reset) delete it; then the core schema and organizations."""
    ensure_database(dbs.url(settings.database.core_url), settings.database)
    existing = _existing_codes(dbs.core)
    demo_codes = [org.code for org in orgs if is_active(org.status)]
    if not reset:
        if existing:
            raise Refused(
                f"the core database already has {len(existing)} organization(s) "
                f"({', '.join(existing[:5])}); use --reset to delete the rows of the "
                "ERP, dashboard and bgworkers tables and generate again"
            )
        busy = [code for code in demo_codes if _has_rows(settings, dbs, code)]
        if busy:
            raise Refused(
                f"tenant database(s) of {', '.join(busy)} already hold ERP rows; "
                "use --reset to delete them"
            )
    else:
        codes = list(dict.fromkeys([*existing, *demo_codes]))
        problems = {
            code: problem for code in codes if (problem := tenant_code_problem(code)) is not None
        }
        for problem in problems.values():
            out(f"demo-data: --reset: {problem}; its database is left alone")
        skipped = list(problems)
        cleared = [
            code for code in codes if code not in skipped and _clear_tenant(settings, dbs, code)
        ]
        _clear(dbs.core, core.metadata.sorted_tables)
        _clear(dbs.coordination, own.metadata.sorted_tables)
        out(
            f"demo-data: --reset: deleted all rows of core and of tenant database(s) "
            f"{', '.join(cleared) or '(none found)'}"
        )
    if dbadmin.init(settings, dbs, [], out):
        raise Failed("core schema")
    with dbs.core.begin() as conn:
        conn.execute(
            core.organization.insert(),
            [
                {
                    "id_org": o.id,
                    "code": o.code,
                    "name": o.name,
                    "status": o.status,
                    "org_serial_code": o.serial_code,
                }
                for o in orgs
            ],
        )


def _existing_codes(engine: Engine) -> list[str]:
    tables = set(inspect(engine).get_table_names())
    codes: list[str] = []
    with engine.connect() as conn:
        if "organization" in tables:
            org = core.organization
            query = select(org.c.code).order_by(org.c.id_org)
            codes = [str(row[0]) for row in conn.execute(query)]
        if not codes and "serial_registry" in tables:
            count = conn.execute(select(func.count()).select_from(core.serial_registry)).scalar()
            if count:
                raise Refused(
                    "the core database has serial_registry rows but no organization; "
                    "use --reset to delete them"
                )
    return codes


def _database_exists(dbs: Databases, raw_url: str) -> bool:
    url = dbs.url(raw_url)
    if is_sqlite(url):
        name = sqlite_file(url)
        return name is None or Path(name).exists()
    try:
        with dbs.engine(raw_url).connect():
            return True
    except OperationalError:
        return False


def _has_rows(settings: Settings, dbs: Databases, code: str) -> bool:
    raw = settings.tenant_url(code)
    if not _database_exists(dbs, raw):
        return False
    engine = dbs.engine(raw)
    present = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        return any(
            conn.execute(
                select(text("1")).select_from(tenant.metadata.tables[name]).limit(1)
            ).first()
            is not None
            for name in _DATA_TABLES
            if name in present
        )


def _clear_tenant(settings: Settings, dbs: Databases, code: str) -> bool:
    raw = settings.tenant_url(code)
    if not _database_exists(dbs, raw):
        return False
    _clear(dbs.engine(raw), tenant.metadata.sorted_tables)
    return True


def _clear(engine: Engine, tables: Iterable[Table]) -> None:
    """Delete every row of `tables` (TRUNCATE on MySQL: fast, and ids start again at 1)."""
    present = set(inspect(engine).get_table_names())
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for table in tables:
            if table.name not in present:
                continue
            if is_mysql(engine):
                conn.exec_driver_sql(f"TRUNCATE TABLE {quote(table.name)}")
            else:
                conn.execute(table.delete())


def _sqlite(engine: Engine) -> bool:
    return is_sqlite(engine)


def _not_core(out: Out) -> Out:
    """db init's lines without the core ones (already reported by the first call)."""

    def emit(line: str) -> None:
        if not line.startswith(("core (", "coordination (")):
            out(line)

    return emit


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
