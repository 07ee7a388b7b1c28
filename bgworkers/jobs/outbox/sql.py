"""Building blocks of the outbox SQL, and the dialect differences, in one place.

- `write_transaction`: MariaDB/MySQL claim rows with `FOR UPDATE SKIP LOCKED`
  under READ COMMITTED (row locks only, no gap locks that would block the ERP
  inserting new rows).  SQLite has a single writer, so `BEGIN IMMEDIATE` takes
  the write lock up front: a second worker waits (busy timeout) until the first
  has committed, then finds the rows it took no longer due.
- `json_rows`: a batch of values (ids, serial -> token pairs, outcomes) bound as
  ONE JSON parameter and joined like a table, `JSON_TABLE` on MariaDB/MySQL,
  `json_each` on SQLite.  One statement per step whatever the batch size: no
  parameter per value to render, no IN list long enough for MariaDB to turn it
  into a scan (`in_predicate_conversion_threshold`), no statement per chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, String, bindparam, column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.types import TypeEngine

from bgworkers.db.dialects import is_sqlite


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction whose locked (claimed) rows stay locked until it ends."""
    with engine.connect() as conn:
        if is_sqlite(engine.url):
            with conn.begin():
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
        else:
            conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                yield conn


class json_rows(TableClause):
    """A table whose rows come from one bound parameter, a JSON array of arrays.

    `json_rows("links", ("serial", String(64)), ("token", BigInteger()))` is
    joined and selected like any table (`links.c.serial`); `bind` turns Python
    rows into the parameter, named like the table.  Rows are read in the order
    given (MariaDB reads the table function first and looks each row up by key).
    """

    inherit_cache = True

    def __init__(self, name: str, *columns: tuple[str, TypeEngine[Any]]) -> None:
        super().__init__(name, *(column(col, type_) for col, type_ in columns))

    def bind(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> dict[str, str]:
        """`{name: JSON}` of `rows`, each value in the form the dialect stores it."""
        processors = [
            (i, fn)
            for i, col in enumerate(self.columns)
            if (fn := col.type.bind_processor(conn.dialect)) is not None
        ]
        if processors:
            rows = [_processed(row, processors) for row in rows]
        return {self.name: json.dumps(rows, default=str)}


def _processed(row: Sequence[Any], processors: Sequence[tuple[int, Any]]) -> list[Any]:
    values = list(row)
    for i, fn in processors:
        if values[i] is not None:
            values[i] = fn(values[i])
    return values


def ids_of(name: str) -> json_rows:
    """A `json_rows` of one integer column `id`."""
    return json_rows(name, ("id", BigInteger()))


def _parameter(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(bindparam(element.name, type_=String()), **kw)


@compiles(json_rows)
def _json_each(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    """SQLite.  `LIMIT -1` (no limit) keeps the planner from flattening the subquery.

    Flattened, json_each looks like a 25-row table and SQLite loops over it once
    per outbox or registry row found through another index: seconds, for a
    500-row batch in a 10,000-row table.  Materialized, it drives the join and
    each of its rows is one key lookup.
    """
    values = ", ".join(f"value ->> {i} AS {col.name}" for i, col in enumerate(element.columns))
    parameter = _parameter(element, compiler, **kw)
    return f"(SELECT {values} FROM json_each({parameter}) LIMIT -1) AS {element.name}"


@compiles(json_rows, "mysql")
def _json_table(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    types = compiler.dialect.type_compiler_instance
    columns = ", ".join(
        f"{col.name} {types.process(col.type)} PATH '$[{i}]'"
        for i, col in enumerate(element.columns)
    )
    parameter = _parameter(element, compiler, **kw)
    return f"JSON_TABLE({parameter}, '$[*]' COLUMNS ({columns})) AS {element.name}"
