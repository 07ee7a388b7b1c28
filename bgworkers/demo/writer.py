"""Bulk rows into one database: chunks written by a background thread.

The generator appends tuples to per-table buffers; a full buffer goes to a
small bounded queue that a writer thread drains on its own connection, so
Python builds the next chunk while the database stores the last one, and
memory stays at a few chunks whatever the scale.

SQLite gets `executemany`.  MySQL/MariaDB gets `LOAD DATA LOCAL INFILE` of a
tab-separated chunk file (two to three times faster than INSERT on both
sides; the affected-row count is checked, since LOCAL turns errors on
duplicate keys into warnings), falling back to `executemany` when the server
or client refuses local files.  The MySQL session skips unique and
foreign-key checks: the generator guarantees them.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table

from bgworkers.db.dialects import is_mysql

Row = tuple[Any, ...]
_STOP = None
_QUEUE_CHUNKS = 3
_NULL = "\\N"
#: Client/server errors meaning "no LOCAL INFILE here": use INSERT instead.
_LOCAL_REFUSED = {1148, 2061, 2068, 3948, 4166}


class WriterError(RuntimeError):
    """The writer thread failed; `__cause__` is the database error."""


class BulkWriter:
    def __init__(
        self, engine: Engine, tables: Mapping[str, tuple[Table, Sequence[str]]], chunk_rows: int
    ) -> None:
        self.engine = engine
        self.chunk_rows = chunk_rows
        self.is_mysql = is_mysql(engine)
        self.used_load_data = False
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        quote = engine.dialect.identifier_preparer.quote
        self._insert: dict[str, str] = {}
        self._load: dict[str, str] = {}
        self.buffers: dict[str, list[Row]] = {}
        self.counts: dict[str, int] = {}
        self._tables = {name: table.name for name, (table, _) in tables.items()}
        for name, (table, columns) in tables.items():
            unknown = [c for c in columns if c not in table.c]
            if unknown:
                raise ValueError(f"{table.name} has no column(s) {', '.join(unknown)}")
            cols = ", ".join(quote(c) for c in columns)
            self._insert[name] = (
                f"INSERT INTO {quote(table.name)} ({cols}) "
                f"VALUES ({', '.join([mark] * len(columns))})"
            )
            self._load[name] = (
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {quote(table.name)} "
                f"CHARACTER SET utf8mb4 ({cols})"
            )
            self.buffers[name] = []
            self.counts[name] = 0
        self._queue: queue.Queue[tuple[str, list[Row]] | None] = queue.Queue(_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)
        self._thread.start()

    def flush(self, force: bool = False) -> None:
        """Hand full buffers (all non-empty ones with force) to the writer thread."""
        for name, rows in self.buffers.items():
            if rows and (force or len(rows) >= self.chunk_rows):
                self._check()
                self.counts[name] += len(rows)
                chunk = rows[:]
                rows.clear()  # the buffer object stays the same: callers keep references
                self._queue.put((name, chunk))

    def close(self) -> None:
        """Write everything left and wait for the thread; raise WriterError if it failed.

        Then refresh the planner's statistics of the tables written: right after a
        bulk load they are stale, and a query planned on them can be 10x slower.
        """
        try:
            self.flush(force=True)
        finally:
            self._queue.put(_STOP)
            self._thread.join()
        self._check()
        written = [self._tables[name] for name, count in self.counts.items() if count]
        if written:
            quote = self.engine.dialect.identifier_preparer.quote
            with self.engine.begin() as conn:
                if self.is_mysql:
                    conn.exec_driver_sql(
                        "ANALYZE TABLE " + ", ".join(quote(t) for t in written)
                    ).fetchall()
                else:
                    conn.exec_driver_sql("ANALYZE")

    def abort(self) -> None:
        """Stop without writing what is buffered (after an error elsewhere)."""
        for rows in self.buffers.values():
            rows.clear()
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise WriterError(f"bulk insert failed: {self._error}") from self._error

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        try:
            if self.is_mysql:
                self._run_mysql()
            else:
                self._run_executemany(self.engine.raw_connection())
        except BaseException as exc:  # reported to the producer by _check()
            self._error = exc
            while self._queue.get() is not _STOP:  # keep the producer from blocking
                pass

    def _run_executemany(
        self, raw: Any, first: tuple[str, list[Row]] | None = None, close: bool = True
    ) -> None:
        try:
            cursor = raw.cursor()
            item = first or self._queue.get()
            while item is not _STOP:
                name, rows = item
                cursor.executemany(self._insert[name], rows)
                raw.commit()
                item = self._queue.get()
        finally:
            if close:
                raw.close()

    def _run_mysql(self) -> None:
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self.engine.url)
        conn = dialect.loaded_dbapi.connect(*args, **{**kwargs, "local_infile": 1})
        try:
            cursor = conn.cursor()
            cursor.execute("SET SESSION unique_checks = 0, foreign_key_checks = 0")
            with tempfile.TemporaryDirectory(prefix="bgworkers-demo-") as tmp:
                path = Path(tmp) / "chunk.tsv"
                while (item := self._queue.get()) is not _STOP:
                    name, rows = item
                    path.write_text(tsv(rows), encoding="utf-8")
                    try:
                        cursor.execute(self._load[name], (str(path),))
                    except dialect.loaded_dbapi.Error as exc:
                        if exc.args and exc.args[0] in _LOCAL_REFUSED and not self.used_load_data:
                            self._run_executemany(conn, item, close=False)  # refused: INSERT
                            return
                        raise
                    if cursor.rowcount != len(rows):
                        raise WriterError(
                            f"{name}: LOAD DATA stored {cursor.rowcount} of "
                            f"{len(rows)} rows (duplicate keys?)"
                        )
                    conn.commit()
                    self.used_load_data = True
        finally:
            conn.close()


def tsv(rows: list[Row]) -> str:
    """Rows as LOAD DATA's default text: tab-separated lines, \\N for NULL.

    Fast path: one %-format per row, then the NULLs (printed as None) patched
    in the whole text.  It is taken when the text proves unambiguous: no
    backslash, one tab per field separator, one newline per row, and exactly
    as many patched fields as None values; otherwise every value is escaped
    one by one.
    """
    width = len(rows[0])
    if width < 2:  # one field a line: NULLs of adjacent lines would share a newline
        return _escaped(rows)
    line = "\t".join(["%s"] * width)
    text = "\n" + "\n".join([line % row for row in rows]) + "\n"
    if (
        "\\" in text
        or text.count("\t") != len(rows) * (width - 1)
        or text.count("\n") != len(rows) + 1
    ):
        return _escaped(rows)
    size = len(text)
    for old, new in _NULL_PATCHES:
        text = text.replace(old, new)
    if (size - len(text)) // 2 != sum(row.count(None) for row in rows):
        return _escaped(rows)  # a real value printed as None
    return text[1:]


#: A None field between separators -> \N (twice: adjacent fields share a tab).
_NULL_PATCHES = (
    ("\nNone\t", "\n\\N\t"),
    ("\tNone\t", "\t\\N\t"),
    ("\tNone\t", "\t\\N\t"),
    ("\tNone\n", "\t\\N\n"),
)


def _escaped(rows: list[Row]) -> str:
    return "".join("\t".join(_field(v) for v in row) + "\n" for row in rows)


def _field(value: Any) -> str:
    if value is None:
        return _NULL
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
