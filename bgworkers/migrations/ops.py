"""The operations a revision declares: each looks at the database (and at what the plan
creates before it) and adds a statement only when something is missing.

Only additions: a table, a NULL-able column, an index, ENUM values appended after
the ones a column has.  Nothing here drops or changes what a database already
has; a table that is missing altogether is left to `db check`, which names what
provides it (see `bgworkers.schema.needs`).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from bgworkers.db.dialects import is_mariadb, is_mysql
from bgworkers.schema.migrate import planner, sql_text


def _compiled(element: sa.schema.ExecutableDDLElement) -> str:
    return str(element.compile(dialect=planner().dialect)).strip()


def create_table(table: sa.Table) -> None:
    """The table with its indexes, unless a table of that name exists (used as it is)."""
    p = planner()
    if p.has_table(table.name):
        return
    p.add(f"table {table.name}", _compiled(CreateTable(table)))
    for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
        p.add(f"index {index.name}", _compiled(CreateIndex(index)), shown=False)
    p.created_table(table)


def add_column(table: sa.Table, name: str) -> None:
    """`table.name` as a NULL-able column, unless present (or the table is absent)."""
    p = planner()
    if not p.has_table(table.name) or name in p.columns(table.name):
        return
    column = table.c[name]._copy()
    column.nullable = True
    bare = sa.Table(table.name, sa.MetaData(), column)
    spec = p.dialect.ddl_compiler(p.dialect, CreateTable(bare)).get_column_specification(column)
    quote = p.dialect.identifier_preparer.quote
    p.add(f"column {table.name}.{name}", f"ALTER TABLE {quote(table.name)} ADD COLUMN {spec}")
    p.added_column(table.name, name)


def add_columns(table: sa.Table, names: list[str]) -> None:
    for name in names:
        add_column(table, name)


def create_index(index: sa.Index) -> None:
    """The index unless one of that name exists (or its table or a column is absent)."""
    p = planner()
    table = index.table
    assert table is not None
    if not p.has_table(table.name) or str(index.name) in p.indexes(table.name):
        return
    if any(c.name not in p.columns(table.name) for c in index.columns):
        return
    p.add(f"index {index.name}", _compiled(CreateIndex(index)))
    p.added_index(table.name, str(index.name))


_ENUM_VALUE = re.compile(r"'((?:[^']|'')*)'")


def widen_enum(table: sa.Table, name: str) -> None:
    """Append the values of `table.name`'s Enum that a MySQL/MariaDB ENUM column lacks.

    The column keeps its values, their order, its character set, collation,
    nullability, default and comment; only new values go at the end (an instant,
    metadata-only change for InnoDB).  SQLite stores the values as plain text and
    a column of another type (VARCHAR) takes any value: nothing to do.
    """
    p = planner()
    if not is_mysql(p.dialect) or not p.has_table(table.name) or table.name in p.created:
        return
    row = p.conn.execute(
        sa.text(
            "SELECT COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, CHARACTER_SET_NAME, "
            "COLLATION_NAME, COLUMN_COMMENT FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = :c"
        ),
        {"t": table.name, "c": name},
    ).one_or_none()
    if row is None or not str(row[0]).lower().startswith("enum("):
        return
    column_type, nullable, default, charset, collation, comment = row
    have = [v.replace("''", "'") for v in _ENUM_VALUE.findall(str(column_type)[5:-1])]
    wanted: tuple[str, ...] = table.c[name].type.enums  # type: ignore[attr-defined]
    new = [v for v in wanted if v not in have]
    if not new:
        return
    d = p.dialect
    parts = [f"ENUM({', '.join(sql_text(d, v) for v in (*have, *new))})"]
    if charset:
        parts.append(f"CHARACTER SET {charset}")
    if collation:
        parts.append(f"COLLATE {collation}")
    parts.append("NULL" if nullable == "YES" else "NOT NULL")
    if default is not None and str(default) != "NULL":
        # MariaDB shows a default as SQL (quoted); MySQL 8 shows the bare value
        text_default = str(default)
        is_sql = is_mariadb(d)
        parts.append(f"DEFAULT {text_default if is_sql else sql_text(d, text_default)}")
    if comment:
        parts.append(f"COMMENT {sql_text(d, str(comment))}")
    quote = d.identifier_preparer.quote
    p.add(
        f"values {', '.join(new)} of ENUM {table.name}.{name}",
        f"ALTER TABLE {quote(table.name)} MODIFY COLUMN {quote(name)} {' '.join(parts)}",
    )
