"""Statements and guarded writes of the serial consistency job.

Reads page through a tenant in key order (keyset pagination, `chunk_size` rows
a page).  Core rows are fetched per page with an IN list of serials: a core
table is never joined with a tenant table.  The writes a page asks for run in
one transaction, each guarded so that a second run, or a run after a crash,
changes nothing more.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Label,
    Row,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from bgworkers.db.dialects import MYSQL, is_sqlite
from bgworkers.schema import core, tenant

FINISHED_TICKET_STATUSES = ("completed", "cancelled")
#: serial_quarantine.serial_code in the ERP's DDL, the smallest documented length:
#: the limit when the table itself does not say (SQLite enforces no length).
QUARANTINE_SERIAL_CHARS = 64
#: Values per IN list: well under every server's limit on bound parameters.
IN_LIST_MAX = 1000

jts, flow_token, job_ticket = tenant.job_ticket_serial, tenant.flow_token, tenant.job_ticket
quarantine_t, outbox_t, registry_t = (
    tenant.serial_quarantine,
    tenant.serial_link_outbox,
    core.serial_registry,
)


T = TypeVar("T")


def in_groups(values: Iterable[T], size: int = IN_LIST_MAX) -> Iterator[list[T]]:
    """`values` in lists of at most `size`, one per IN list."""
    group: list[T] = []
    for value in values:
        group.append(value)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def same_text(
    dialect: Dialect, a: ColumnElement[Any], b: ColumnElement[Any]
) -> ColumnElement[bool]:
    """`a = b` byte for byte.  MySQL compares text by collation (case-insensitive, trailing
    blanks ignored); the plain `=` stays so that the index on `a` is used."""
    if is_sqlite(dialect):
        return a == b
    return and_(a == b, func.binary(a) == b)


def as_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    """An ENUM column read as plain text (same SQL; skips per-value enum lookups)."""
    return type_coerce(column, String).label(column.key)


def in_key_order(stmt: Select[Any], table: Table) -> Select[Any]:
    """Read `table` along its primary key (MySQL), whatever other index the filter could use.

    A keyset page filtered on an indexed column (flow_token.status) would otherwise
    be read through that index and sorted again for every page: quadratic.
    """
    for name in MYSQL:
        stmt = stmt.with_hint(table, "FORCE INDEX (PRIMARY)", name)
    return stmt


def date_text(column: ColumnElement[Any]) -> Label[str]:
    """A DATETIME column read as its text, parsed per row by the job (`parse_naive`).

    Read as a date, a zero date ('0000-00-00', kept by MariaDB with a relaxed
    sql_mode) arrives as None, and an unparsable SQLite value raises on fetch,
    failing the whole page; as text, every value arrives and can be judged.
    """
    return cast(column, String).label(column.key)


def unindexed(dialect: Dialect, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column` as a term SQLite will not serve from an index (unary +), for the same reason."""
    if not is_sqlite(dialect):
        return column
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


# ---------------------------------------------------------------- reads


def unlinked_serials(dialect: Dialect, live: Sequence[str], limit: int) -> Select[Any]:
    """A page of job-ticket serials with no tenant link, after id_serial `:last`.

    `token`: the lowest live piece token carrying the serial (a missing tenant
    link); `carried`: whether any token at all carries it (else maybe orphaned).
    """
    ft = flow_token.alias("ft")
    first_live = (
        select(func.min(ft.c.id_token))
        .where(
            same_text(dialect, ft.c.serial_number, jts.c.serial_number),
            ft.c.token_type == "piece",
            ft.c.status.in_(live),
        )
        .scalar_subquery()
    )
    carried = exists().where(same_text(dialect, ft.c.serial_number, jts.c.serial_number))
    return (
        select(
            jts.c.id_serial,
            jts.c.serial_number,
            date_text(jts.c.generated_at),
            job_ticket.c.status.label("ticket_status"),
            first_live.label("token"),
            carried.label("carried"),
        )
        .select_from(jts.outerjoin(job_ticket, job_ticket.c.id_job_ticket == jts.c.id_job_ticket))
        .where(jts.c.spawned_token_id.is_(None), jts.c.id_serial > bindparam("last"))
        .order_by(jts.c.id_serial)
        .limit(limit)
    )


def live_tokens(dialect: Dialect, live: Sequence[str], limit: int) -> Select[Any]:
    """A page of live tokens with a serial, after id_token `:last`.

    `dup_of`: for a piece token, the lowest other live piece token with the same serial.
    """
    other = flow_token.alias("other")
    dup = (
        select(func.min(other.c.id_token))
        .where(
            same_text(dialect, other.c.serial_number, flow_token.c.serial_number),
            other.c.id_token != flow_token.c.id_token,
            other.c.token_type == "piece",
            other.c.status.in_(live),
        )
        .scalar_subquery()
    )
    stmt = (
        select(
            flow_token.c.id_token,
            as_text(flow_token.c.token_type),
            flow_token.c.serial_number,
            case((flow_token.c.token_type == "piece", dup)).label("dup_of"),
        )
        .where(
            flow_token.c.id_token > bindparam("last"),
            unindexed(dialect, flow_token.c.status).in_(live),
            flow_token.c.serial_number.is_not(None),
        )
        .order_by(flow_token.c.id_token)
        .limit(limit)
    )
    return in_key_order(stmt, flow_token)


def token_spawned_at(conn: Connection, ids: Iterable[int]) -> dict[int, str | None]:
    """`spawned_at` of tokens, as text (see `date_text`)."""
    out: dict[int, str | None] = {}
    for group in in_groups(ids):
        rows = conn.execute(
            select(flow_token.c.id_token, date_text(flow_token.c.spawned_at)).where(
                flow_token.c.id_token.in_(group)
            )
        )
        out.update((int(r.id_token), r.spawned_at) for r in rows)
    return out


def quarantine_serial_chars(engine: Engine) -> int:
    """The longest serial `serial_quarantine.serial_code` holds, read from the table.

    MariaDB/MySQL: information_schema; SQLite: the declared type, `VARCHAR(n)`.
    Without a length there, the ERP's documented one.
    """
    with engine.connect() as conn:
        if is_sqlite(engine):
            declared = next(
                (
                    str(row[2])
                    for row in conn.exec_driver_sql("PRAGMA table_info(serial_quarantine)")
                    if row[1] == "serial_code"
                ),
                "",
            )
            found = re.search(r"\((\d+)\)", declared)
            length = int(found.group(1)) if found else None
        else:
            length = conn.execute(
                text(
                    "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'serial_quarantine' "
                    "AND COLUMN_NAME = 'serial_code'"
                )
            ).scalar()
    return int(length) if length else QUARANTINE_SERIAL_CHARS


def registry_rows(engine: Engine, serials: Iterable[str]) -> dict[str, Row[Any]]:
    """Core registry rows by exact serial_code (the column is binary: exact match)."""
    out: dict[str, Row[Any]] = {}
    stmt = select(
        registry_t.c.serial_code,
        registry_t.c.tenant_id,
        as_text(registry_t.c.production_type),
        registry_t.c.dag_token_id,
        registry_t.c.hash_signature,
        registry_t.c.hash_salt_version,
    )
    with engine.connect() as conn:
        for group in in_groups(serials):
            for row in conn.execute(stmt.where(registry_t.c.serial_code.in_(group))).all():
                out[row.serial_code] = row
    return out


# ---------------------------------------------------------------- writes


@dataclass(frozen=True)
class Quarantine:
    serial: str
    reason: str
    source_table: str
    source_id: int


@dataclass
class Page:
    """What one page of findings asks to write."""

    quarantine: list[Quarantine] = field(default_factory=list)
    enqueue: list[tuple[str, int]] = field(default_factory=list)  # (serial, id_token)
    links: list[tuple[int, int, datetime]] = field(default_factory=list)  # id_serial, token, at

    def __bool__(self) -> bool:
        return bool(self.quarantine or self.enqueue or self.links)


@dataclass
class Done:
    """Rows written by a page (or, in a dry run, that would have been)."""

    quarantined: Counter[str] = field(default_factory=Counter)  # by reason
    enqueued: int = 0
    linked: int = 0


def write_page(
    engine: Engine, page: Page, now: datetime, dry_run: bool, check_lease: Callable[[], None]
) -> Done:
    """Write what `page` asks, in one transaction, guarded; a dry run only counts."""
    if not page:
        return Done()
    if dry_run:
        with engine.connect() as conn:
            new_q, new_o = _new_quarantine(conn, page.quarantine), _new_outbox(conn, page.enqueue)
        return Done(Counter(q.reason for q in new_q), len(new_o), len(page.links))
    check_lease()
    with engine.begin() as conn:
        new_q, new_o = _new_quarantine(conn, page.quarantine), _new_outbox(conn, page.enqueue)
        if new_q:
            conn.execute(
                insert(quarantine_t),
                [
                    {
                        "serial_code": q.serial,
                        "source_table": q.source_table,
                        "source_id": q.source_id,
                        "reason": q.reason,
                        "detected_at": now,
                    }
                    for q in new_q
                ],
            )
        if new_o:
            conn.execute(
                insert(outbox_t),
                [
                    {
                        "serial_code": serial,
                        "dag_token_id": token,
                        "status": "pending",
                        "retry_count": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for serial, token in new_o
                ],
            )
        linked = 0
        guarded = (
            update(jts)
            .where(jts.c.id_serial == bindparam("id"), jts.c.spawned_token_id.is_(None))
            .values(spawned_token_id=bindparam("token"), spawned_at=bindparam("at"))
        )
        for id_serial, token, at in page.links:
            linked += conn.execute(guarded, {"id": id_serial, "token": token, "at": at}).rowcount
    return Done(Counter(q.reason for q in new_q), len(new_o), linked)


def _new_quarantine(conn: Connection, wanted: list[Quarantine]) -> list[Quarantine]:
    """The wanted rows that have no open quarantine row yet (exact serial match)."""
    if not wanted:
        return []
    q = quarantine_t
    stmt = select(q.c.serial_code, q.c.reason, q.c.source_table, q.c.source_id)
    have: set[Quarantine] = set()
    for group in in_groups(sorted({w.serial for w in wanted})):
        rows = conn.execute(stmt.where(q.c.resolved_at.is_(None), q.c.serial_code.in_(group)))
        have.update(
            Quarantine(r.serial_code, str(r.reason), r.source_table, r.source_id) for r in rows
        )
    return [w for w in dict.fromkeys(wanted) if w not in have]


def _new_outbox(conn: Connection, wanted: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The wanted (serial, token) pairs without a pending outbox row."""
    if not wanted:
        return []
    o = outbox_t
    have: set[tuple[str, int]] = set()
    for group in in_groups(sorted({token for _, token in wanted})):
        rows = conn.execute(
            select(o.c.serial_code, o.c.dag_token_id).where(
                o.c.status == "pending", o.c.dag_token_id.in_(group)
            )
        )
        have.update((r.serial_code, int(r.dag_token_id)) for r in rows)
    return [w for w in dict.fromkeys(wanted) if w not in have]
