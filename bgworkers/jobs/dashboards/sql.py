"""Dashboard SQL shared by the summary tables: the refresh moment, dialect constructs,
rounding and team attribution.

Everything here is SQLAlchemy Core that runs on MySQL/MariaDB and SQLite.  The
few dialect differences are the constructs at the top (integer division,
seconds between two timestamps, a day number), each compiled per dialect, and
two for MySQL/MariaDB only (a group's values as one ordered list, the n-th of
them: percentiles without a window sort).

Numbers are computed in integer arithmetic and rounded once, half away from
zero, to two decimals (`cents`), so that both backends give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    DateTime,
    FromClause,
    Insert,
    Integer,
    Join,
    Numeric,
    ScalarSelect,
    Select,
    String,
    Subquery,
    Table,
    bindparam,
    case,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from bgworkers.schema.tenant import flow_token, team_member, token_assignment

OPEN_ASSIGNMENT = ("assigned", "accepted", "started", "paused")


@dataclass(frozen=True)
class Moment:
    """One refresh: its snapshot time (naive ERP-local, whole seconds) and its inputs."""

    snapshot_at: datetime
    live_statuses: tuple[str, ...]
    #: the SQL parameters `at` handed out: name -> shift from snapshot_at
    shifts: dict[str, timedelta] = field(default_factory=dict, compare=False, repr=False)

    @property
    def today(self) -> date:
        return self.snapshot_at.date()

    def at(self, shift: timedelta = timedelta(0)) -> BindParameter[datetime]:
        """snapshot_at (+ shift) as a named, typed SQL parameter (SQLite stores it exactly
        like inserted rows).  A statement built with one moment runs for another with
        that one's `params()`."""
        seconds = int(shift.total_seconds())
        name = (
            f"snapshot_at_{'minus' if seconds < 0 else 'plus'}_{abs(seconds)}s"
            if seconds
            else "snapshot_at"
        )
        self.shifts[name] = shift
        return bindparam(name, self.snapshot_at + shift, DateTime())

    def params(self) -> dict[str, datetime]:
        """The values of the parameters `at` handed out (or `adopt`ed), at this moment."""
        return {name: self.snapshot_at + shift for name, shift in self.shifts.items()}

    def adopt(self, shifts: dict[str, timedelta]) -> None:
        """Take on the parameters of statements built with another moment."""
        self.shifts.update(shifts)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


# --- the dialect differences -------------------------------------------------------------


class idiv(FunctionElement[int]):
    """Integer division truncating toward zero: `a / b` on SQLite, `a DIV b` on MySQL."""

    type = Integer()
    name = "idiv"
    inherit_cache = True


class seconds_between(FunctionElement[int]):
    """Whole seconds from the first timestamp to the second."""

    type = Integer()
    name = "seconds_between"
    inherit_cache = True


class day_number(FunctionElement[int]):
    """A day count: consecutive calendar days differ by one (only differences are used)."""

    type = Integer()
    name = "day_number"
    inherit_cache = True


def _args(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(arg, **kw) for arg in element.clauses]


@compiles(idiv)
def _idiv(element: idiv, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    return f"(({a}) / ({b}))"


@compiles(idiv, "mysql")
def _idiv_mysql(element: idiv, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    return f"(({a}) DIV ({b}))"


@compiles(seconds_between)
def _seconds(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    return f"(CAST(strftime('%s', {b}) AS INTEGER) - CAST(strftime('%s', {a}) AS INTEGER))"


@compiles(seconds_between, "mysql")
def _seconds_mysql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    return f"TIMESTAMPDIFF(SECOND, {a}, {b})"


@compiles(day_number)
def _day_number(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    (a,) = _args(element, compiler, **kw)
    return f"CAST(julianday(date({a})) AS INTEGER)"


@compiles(day_number, "mysql")
def _day_number_mysql(element: day_number, compiler: SQLCompiler, **kw: Any) -> str:
    (a,) = _args(element, compiler, **kw)
    return f"TO_DAYS({a})"


class ordered_list(FunctionElement[str]):
    """MySQL/MariaDB only: a group's integer values in ascending order, as one text list."""

    type = String()
    name = "ordered_list"
    inherit_cache = True


class nth(FunctionElement[int]):
    """MySQL/MariaDB only: the value at 0-based position i of an `ordered_list`."""

    type = Integer()
    name = "nth"
    inherit_cache = True


@compiles(ordered_list, "mysql")
def _ordered_list(element: ordered_list, compiler: SQLCompiler, **kw: Any) -> str:
    (a,) = _args(element, compiler, **kw)
    return f"GROUP_CONCAT({a} ORDER BY {a} SEPARATOR ',')"


@compiles(nth, "mysql")
def _nth(element: nth, compiler: SQLCompiler, **kw: Any) -> str:
    values, i = _args(element, compiler, **kw)
    return f"CAST(SUBSTRING_INDEX(SUBSTRING_INDEX({values}, ',', ({i}) + 1), ',', -1) AS SIGNED)"


# --- shared pieces ----------------------------------------------------------------------


def cents(num: ColumnElement[Any], den: ColumnElement[Any] | int) -> ColumnElement[Any]:
    """num / den (integers, den > 0) rounded half away from zero to 2 decimals."""
    up = idiv(200 * num + den, 2 * den)  # round(100 * num / den) for num >= 0
    down = -idiv(-200 * num + den, 2 * den)
    return case((num >= 0, up), else_=down) / literal_column("100.0", Numeric(12, 2))


def member_team() -> Subquery:
    """id_member -> its team: the lowest id_team among its active memberships."""
    tm = team_member
    return (
        select(tm.c.id_member, func.min(tm.c.id_team).label("id_team"))
        .where(tm.c.active == 1)
        .group_by(tm.c.id_member)
        .subquery("member_team")
    )


def open_assignee(id_token: ColumnElement[Any]) -> ScalarSelect[Any]:
    """The user of the token's open assignment (the latest one if several are open).

    Read backwards along the token's index, it stops at the first open one; its
    cost follows the tokens looked at, not the size of the assignment history.
    """
    a = token_assignment
    return (
        select(a.c.assigned_to_user_id)
        .where(a.c.id_token == id_token, a.c.status.in_(OPEN_ASSIGNMENT))
        .order_by(a.c.id_assignment.desc())
        .limit(1)
        .scalar_subquery()
    )


def with_team(tokens: FromClause, which: ColumnElement[bool]) -> tuple[Join, Any]:
    """`tokens` (containing flow_token) joined to the team of each flow_token row that
    satisfies `which`; returns the join and the id_team column (NULL: no open
    assignment, or its member has no active membership).

    The per-token lookup sits in a subquery grouped by the token: grouping makes the
    database materialize it, so the lookup runs once per token.
    """
    t = flow_token
    assignee = (
        select(t.c.id_token, open_assignee(t.c.id_token).label("user_id"))
        .where(which)
        .group_by(t.c.id_token)
        .subquery("assignee")
    )
    mt = member_team()
    joined = tokens.outerjoin(assignee, assignee.c.id_token == t.c.id_token).outerjoin(
        mt, mt.c.id_member == assignee.c.user_id
    )
    return joined, mt.c.id_team


def flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 when the condition holds, else 0."""
    return case((condition, 1), else_=0)


def snapshot_columns(table: Table) -> list[Column[Any]]:
    """Every column of a summary table but its id, in table order."""
    return [c for c in table.c if c.name != "id"]


def insert_snapshot(table: Table, query: Select[Any]) -> Insert:
    """INSERT INTO table (snapshot_columns) SELECT ...: the query lists them in that order."""
    return table.insert().from_select(snapshot_columns(table), query)
