"""Plan and apply this project's schema changes: the Alembic chains, looked at first.

The revisions live in Alembic chains (`bgworkers/migrations/<chain>/`, ordered
by Alembic's revision graph, recorded in `bgw_schema_version` like Alembic
does).  Each revision's `upgrade()` declares what it adds through
`bgworkers.migrations.ops`; nothing runs while it does.  `plan` replays every
revision of the chain, old and pending, against what the database has (an
inspection, plus what earlier steps of the same plan create), and collects the
statements still needed:

- `db upgrade` runs exactly the planned statements, in order;
- `db upgrade --dry-run` prints exactly them;
- `db check` reports what they would add.

So a database altered by hand, or one whose recorded revision is current but
lacks something it added (a restored table), converges on every upgrade, and a
second upgrade has nothing to do.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Dialect, Engine, MetaData, String, Table, inspect
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.schema import CreateTable, PrimaryKeyConstraint

from bgworkers.db.dialects import is_mysql

Chain = Literal["coordination", "tenant"]
VERSION_TABLE = "bgw_schema_version"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class Change:
    what: str  # for people: "column mv_x.p50_minutes", "index ix_y", "table t"
    sql: str  # one statement, no terminator
    #: named by `db check` (an index of a table the plan creates goes with the table)
    shown: bool = True


@dataclass
class Step:
    revision: str
    recorded: bool  # already in bgw_schema_version
    changes: list[Change] = field(default_factory=list)


@dataclass
class Plan:
    chain: Chain
    current: str | None
    steps: list[Step]
    #: version bookkeeping, kept apart from `steps` (not a schema change for `db check`)
    version_sql: dict[str, list[str]] = field(default_factory=dict)

    @property
    def todo(self) -> list[Step]:
        """Steps that run something: pending revisions and those with missing changes."""
        return [s for s in self.steps if s.changes or not s.recorded]

    def statements(self) -> list[str]:
        """Every statement `apply` runs, in order."""
        out: list[str] = []
        for step in self.todo:
            out += [c.sql for c in step.changes]
            out += self.version_sql.get(step.revision, [])
        return out

    def missing(self) -> list[str]:
        """What the planned statements add, for `db check`."""
        return [c.what for s in self.steps for c in s.changes if c.shown]

    def label(self) -> str:
        return ", ".join(
            s.revision if not s.recorded else f"{s.revision} (again)" for s in self.todo
        )


class Planner:
    """The database as an inspection shows it, plus what the plan so far creates."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect: Dialect = conn.dialect
        self._insp: Inspector = inspect(conn)
        self._tables = set(self._insp.get_table_names())
        self._columns: dict[str, set[str]] = {}
        self._indexes: dict[str, set[str]] = {}
        self.created: set[str] = set()  # tables this plan creates (complete by definition)
        self.changes: list[Change] = []

    def has_table(self, name: str) -> bool:
        return name in self._tables

    def columns(self, name: str) -> set[str]:
        if name not in self._columns:
            self._columns[name] = {c["name"] for c in self._insp.get_columns(name)}
        return self._columns[name]

    def indexes(self, name: str) -> set[str]:
        if name not in self._indexes:
            found = {str(ix["name"]) for ix in self._insp.get_indexes(name)}
            found |= {str(uq["name"]) for uq in self._insp.get_unique_constraints(name)}
            self._indexes[name] = found
        return self._indexes[name]

    def add(self, what: str, sql: str, shown: bool = True) -> None:
        self.changes.append(Change(what, sql, shown))

    def created_table(self, table: Table) -> None:
        self._tables.add(table.name)
        self.created.add(table.name)
        self._columns[table.name] = {c.name for c in table.columns}
        self._indexes[table.name] = {str(ix.name) for ix in table.indexes}

    def added_column(self, table: str, column: str) -> None:
        self.columns(table).add(column)

    def added_index(self, table: str, index: str) -> None:
        self.indexes(table).add(index)


_planner: contextvars.ContextVar[Planner] = contextvars.ContextVar("bgworkers_planner")


def planner() -> Planner:
    """The planner of the revision being planned (for `bgworkers.migrations.ops`)."""
    try:
        return _planner.get()
    except LookupError:
        raise RuntimeError("migration operations run only inside migrate.plan") from None


@contextmanager
def _planning(p: Planner) -> Iterator[Planner]:
    token = _planner.set(p)
    try:
        yield p
    finally:
        _planner.reset(token)


def _script(chain: Chain) -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_locations", str(MIGRATIONS / chain))
    cfg.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(cfg)


def _current(conn: Connection) -> str | None:
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def _version_table() -> Table:
    """The version table as Alembic makes it."""
    return Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def sql_text(dialect: Dialect, value: str) -> str:
    """A string literal for this dialect (MySQL also escapes backslashes by default)."""
    escaped = value.replace("'", "''")
    if is_mysql(dialect):
        escaped = escaped.replace("\\", "\\\\")
    return f"'{escaped}'"


def plan(conn: Connection, chain: Chain) -> Plan:
    """What `apply` will run on this database: nothing runs here."""
    script = _script(chain)
    current = _current(conn)
    recorded = {r.revision for r in script.iterate_revisions(current, "base")} if current else set()
    revisions = list(reversed(list(script.iterate_revisions("heads", "base"))))
    p = Planner(conn)
    steps = []
    with _planning(p):
        for rev in revisions:
            before = len(p.changes)
            rev.module.upgrade()
            steps.append(Step(rev.revision, rev.revision in recorded, p.changes[before:]))
    result = Plan(chain, current, steps)
    last = current
    for step in result.todo:
        if step.recorded:
            continue
        sql = []
        if last is None:
            if not p.has_table(VERSION_TABLE):
                sql.append(str(CreateTable(_version_table()).compile(dialect=conn.dialect)).strip())
                p.created_table(_version_table())
            sql.append(
                f"INSERT INTO {VERSION_TABLE} (version_num) "
                f"VALUES ({sql_text(conn.dialect, step.revision)})"
            )
        else:
            sql.append(
                f"UPDATE {VERSION_TABLE} SET version_num = "
                f"{sql_text(conn.dialect, step.revision)} "
                f"WHERE version_num = {sql_text(conn.dialect, last)}"
            )
        result.version_sql[step.revision] = sql
        last = step.revision
    return result


def apply(engine: Engine, result: Plan) -> list[str]:
    """Run a plan, one transaction per revision (DDL commits at once on MySQL)."""
    for step in result.todo:
        with engine.begin() as conn:
            for stmt in [c.sql for c in step.changes] + result.version_sql.get(step.revision, []):
                conn.exec_driver_sql(stmt)
    return [s.revision for s in result.todo]


def make_plan(engine: Engine, chain: Chain) -> Plan:
    with engine.connect() as conn:
        return plan(conn, chain)


def upgrade(engine: Engine, chain: Chain, sql_out: TextIO | None = None) -> list[str]:
    """Apply what the chain still needs and return the revisions that ran; with
    sql_out, write their statements there instead (each ending with ';')."""
    result = make_plan(engine, chain)
    if sql_out is not None:
        for stmt in result.statements():
            sql_out.write(f"{stmt};\n")
        return [s.revision for s in result.todo]
    return apply(engine, result)


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _current(conn)


def pending(engine: Engine, chain: Chain) -> list[str]:
    """Revisions not yet recorded, oldest first."""
    return [s.revision for s in make_plan(engine, chain).steps if not s.recorded]
