"""Building blocks of the outbox SQL, and the dialect differences, in one place.

- `write_transaction`: MariaDB/MySQL claim rows with `FOR UPDATE SKIP LOCKED`
  under READ COMMITTED (row locks only, no gap locks that would block the ERP
  inserting new rows).  SQLite has a single writer, so `BEGIN IMMEDIATE` takes
  the write lock up front: a second worker waits (busy timeout) until the first
  has committed, then finds the rows it took no longer due.
- `int_key_lookup`: how one statement gives each row its own value.
- Lists are bound as numbered parameters padded to a power of two (`padded`,
  `one_of`): few statement shapes, each compiled once, no SQL rendered per run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from bgworkers.db import is_sqlite

#: Values per IN list and lookup.  Under 1000: MariaDB turns longer IN lists of a
#: SELECT into a subquery (in_predicate_conversion_threshold) and scans instead of
#: seeking by key.
CHUNK = 512

T = TypeVar("T")


def chunks(values: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    size = size or CHUNK
    for start in range(0, len(values), size):
        yield values[start : start + size]


def padded(size: int) -> int:
    """The bound size of a list of `size` values: a power of two, at most CHUNK."""
    return min(CHUNK, 1 << max(size - 1, 0).bit_length())


def one_of(column: ColumnElement[Any], name: str, size: int) -> ColumnElement[bool]:
    """`column IN (:name0, ..., :name<size-1>)`, filled in by `list_params`."""
    return column.in_([bindparam(f"{name}{i}", type_=column.type) for i in range(size)])


def list_params(name: str, values: Sequence[Any], size: int) -> dict[str, Any]:
    """Parameters of a `one_of`; the last value repeats as padding."""
    last = len(values) - 1
    return {f"{name}{i}": values[min(i, last)] for i in range(size)}


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


class int_key_lookup(FunctionElement[Any]):
    """The value paired with an integer key among `size` bound (key, value) pairs.

    SQLite: `CASE key WHEN k0 THEN v0 ... END`.  MySQL/MariaDB:
    `ELT(INTERVAL(key, k0, ...), v0, ...)`, where INTERVAL() binary-searches keys
    given in ascending order (a CASE would be walked WHEN by WHEN for every row).
    Filled in by `lookup_params`, which sorts the pairs.  Every row the statement
    touches must have its key among them (select the rows with `one_of` on the
    same keys): INTERVAL would give a missing key its lower neighbour's value.
    """

    name = "int_key_lookup"
    inherit_cache = True

    def __init__(self, key: ColumnElement[Any], name: str, size: int, type_: Any) -> None:
        self.type = type_
        super().__init__(
            key,
            *[bindparam(f"{name}_k{i}", type_=key.type) for i in range(size)],
            *[bindparam(f"{name}_v{i}", type_=type_) for i in range(size)],
        )


def _lookup_parts(
    element: int_key_lookup, compiler: SQLCompiler, **kw: Any
) -> tuple[str, list[str], list[str]]:
    key, *pairs = [compiler.process(arg, **kw) for arg in element.clauses]
    half = len(pairs) // 2
    return key, pairs[:half], pairs[half:]


@compiles(int_key_lookup)
def _lookup_case(element: int_key_lookup, compiler: SQLCompiler, **kw: Any) -> str:
    key, keys, values = _lookup_parts(element, compiler, **kw)
    whens = " ".join(f"WHEN {k} THEN {v}" for k, v in zip(keys, values, strict=True))
    return f"CASE {key} {whens} END"


@compiles(int_key_lookup, "mysql")
def _lookup_elt(element: int_key_lookup, compiler: SQLCompiler, **kw: Any) -> str:
    key, keys, values = _lookup_parts(element, compiler, **kw)
    return f"ELT(INTERVAL({key}, {', '.join(keys)}), {', '.join(values)})"


def lookup_params(name: str, pairs: Sequence[tuple[int, Any]], size: int) -> dict[str, Any]:
    """Parameters of an `int_key_lookup`: keys ascending, the last pair repeated as padding."""
    ordered = sorted(pairs, key=lambda pair: pair[0])
    params = {}
    for i in range(size):
        params[f"{name}_k{i}"], params[f"{name}_v{i}"] = ordered[min(i, len(ordered) - 1)]
    return params
