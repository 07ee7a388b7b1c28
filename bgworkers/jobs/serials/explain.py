"""`bgworkers explain SERIAL`: all that is known about one serial, and what the check concludes.

It reads the core registry row and, per tenant (every active tenant, or the one
named), the tokens carrying the serial, its job-ticket serial row, outbox rows
and quarantine rows, then applies the rules of the serial_consistency job (the
same functions) to say what a run would find and do.  Serials match byte for
byte, as in the job.

It never writes: every database is read through a connection that cannot
write (`read_only`), in one snapshot, and a SQLite database file that does not
exist is reported missing, not created.  Salts are used, never shown.
Exit status: 0 something is known, 1 nothing is known anywhere (a database
that could not be read is named), 2 bad input (empty serial, a tenant that
tenancy.resolve refuses).  Tenants that discovery refuses are listed with why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, literal, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.db.dialects import is_sqlite, missing_sqlite_file
from bgworkers.engine.clock import Clock, naive_utc
from bgworkers.engine.tenancy import Databases, TenantError, discover, is_active, resolve
from bgworkers.jobs.serials.checks import as_text, date_text, same_text
from bgworkers.jobs.serials.consistency import parse_naive
from bgworkers.jobs.serials.explain_rules import Judge, describe_format
from bgworkers.schema import core
from bgworkers.schema import tenant as erp
from bgworkers.settings import Settings

Out = Callable[[str], None]
Record = dict[str, Any]


class BadInput(Exception):
    """What was asked cannot be answered as asked (exit status 2)."""


@dataclass
class TenantFacts:
    code: str
    id: int
    active: bool = True
    error: str | None = None
    refused: bool = False  # discovery refused the tenant (error says why); not read
    tokens: list[Record] = field(default_factory=list)
    job_ticket_serial: Record | None = None
    outbox: list[Record] = field(default_factory=list)
    quarantine: list[Record] = field(default_factory=list)
    conclusions: list[Record] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.tokens or self.job_ticket_serial or self.outbox or self.quarantine)


@dataclass
class Facts:
    serial: str
    format: Record
    registry: Record | None = None
    registry_error: str | None = None
    tenants: list[TenantFacts] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.registry is not None or any(t.known for t in self.tenants)


def gather(
    settings: Settings, dbs: Databases, serial: str, tenant_code: str | None, clock: Clock
) -> Facts:
    """Everything known about `serial`, with conclusions.  Raises BadInput, or
    SQLAlchemyError when core cannot tell which tenants to read."""
    if not serial:
        raise BadInput("the serial is empty")
    job = settings.jobs.serial_consistency
    facts = Facts(serial, describe_format(serial, job.exempt_patterns))
    _require_file(dbs.url(settings.database.core_url), "core")
    facts.tenants = _tenants(settings, dbs, tenant_code)
    try:
        with read_only(dbs.core) as conn:
            facts.registry = _registry(conn, serial)
    except SQLAlchemyError as exc:
        facts.registry_error = error_line(exc)
    utc_now = naive_utc(clock.now())
    judge = Judge(settings, serial, facts.registry, facts.registry_error is None, utc_now)
    if facts.registry is not None:
        facts.registry["hash_check"] = judge.hash_check
    for found in facts.tenants:
        if found.refused:
            continue
        try:
            _require_file(dbs.url(settings.tenant_url(found.code)), f"tenant {found.code}")
            with read_only(dbs.tenant(found.code)) as conn:
                _read_tenant(conn, serial, found)
        except (SQLAlchemyError, BadInput) as exc:
            found.error = error_line(exc)
            continue
        found.conclusions = judge.conclude(
            found.id, found.tokens, found.job_ticket_serial, found.outbox, found.quarantine
        )
    return facts


# ---------------------------------------------------------------- reading


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection that refuses writes, reading one snapshot, rolled back at the end.

    SQLite: `PRAGMA query_only` (switched off again before the connection goes
    back to the pool, or the connection is discarded); MySQL/MariaDB: a
    `READ ONLY` transaction.
    """
    with engine.connect() as conn:
        if not is_sqlite(conn):
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
            yield conn  # the pool rolls it back on return
            return
        conn.exec_driver_sql("PRAGMA query_only = ON")
        try:
            conn.exec_driver_sql("BEGIN")
            yield conn
        finally:
            try:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA query_only = OFF")
                conn.commit()
            except SQLAlchemyError:
                conn.invalidate()  # never hand a query-only connection to a writer


def _require_file(url: URL, what: str) -> None:
    """A SQLite database must exist already: connecting would create an empty file."""
    name = missing_sqlite_file(url)
    if name is not None:
        raise BadInput(f"{what}: database file {name} does not exist")


def _tenants(settings: Settings, dbs: Databases, code: str | None) -> list[TenantFacts]:
    """The tenants to read: the one named (tenancy.resolve: exact code, served by the
    daemon; BadInput otherwise), or every tenant discovery lists, refused ones included."""
    if code is not None:
        try:
            tenant = resolve(settings, dbs.core, code)
        except TenantError as exc:
            raise BadInput(str(exc)) from None
        return [TenantFacts(tenant.code, tenant.id)]
    tenants, refused = discover(settings, dbs.core)
    found = [TenantFacts(t.code, t.id) for t in tenants]
    found += [TenantFacts(p.code, p.id, error=p.error, refused=True) for p in refused]
    return sorted(found, key=lambda t: t.id)


def _registry(conn: Connection, serial: str) -> Record | None:
    reg, org = core.serial_registry, core.organization
    columns = [as_text(c) if c.key in ("production_type", "serial_scope") else c for c in reg.c]
    found = conn.execute(select(*columns).where(reg.c.serial_code == serial)).mappings().first()
    if found is None:
        return None
    row = dict(found)
    owner = conn.execute(
        select(org.c.code, org.c.status).where(org.c.id_org == row["tenant_id"])
    ).first()
    row["tenant_code"] = None if owner is None else owner.code
    row["tenant_active"] = owner is not None and is_active(owner.status)
    return row


def _read_tenant(conn: Connection, serial: str, into: TenantFacts) -> None:
    dialect, value = conn.dialect, literal(serial, String)
    ft, node = erp.flow_token, erp.routing_node
    into.tokens = _all(
        conn,
        select(
            ft.c.id_token,
            as_text(ft.c.token_type),
            as_text(ft.c.status),
            ft.c.current_node_id,
            node.c.node_code,
            date_text(ft.c.spawned_at),
        )
        .select_from(ft.outerjoin(node, node.c.id_node == ft.c.current_node_id))
        .where(same_text(dialect, ft.c.serial_number, value))
        .order_by(ft.c.id_token),
    )
    jts, ticket = erp.job_ticket_serial, erp.job_ticket
    rows = _all(
        conn,
        select(
            jts.c.id_serial,
            jts.c.id_job_ticket,
            ticket.c.ticket_code,
            ticket.c.status.label("ticket_status"),
            jts.c.sequence_no,
            date_text(jts.c.generated_at),
            date_text(jts.c.spawned_at),
            jts.c.spawned_token_id,
        )
        .select_from(jts.outerjoin(ticket, ticket.c.id_job_ticket == jts.c.id_job_ticket))
        .where(same_text(dialect, jts.c.serial_number, value)),
    )
    for record in (*into.tokens, *rows):
        _dates(record, "generated_at", "spawned_at")
    into.job_ticket_serial = rows[0] if rows else None  # serial_number is unique
    box = erp.serial_link_outbox
    into.outbox = _all(
        conn,
        select(
            box.c.id,
            box.c.dag_token_id,
            as_text(box.c.status),
            box.c.retry_count,
            box.c.last_error,
            box.c.created_at,
            box.c.updated_at,
            box.c.next_attempt_at,
        )
        .where(same_text(dialect, box.c.serial_code, value))
        .order_by(box.c.id),
    )
    q = erp.serial_quarantine
    into.quarantine = _all(
        conn,
        select(
            q.c.id,
            as_text(q.c.reason),
            q.c.source_table,
            q.c.source_id,
            q.c.detected_at,
            q.c.resolved_at,
        )
        .where(same_text(dialect, q.c.serial_code, value))
        .order_by(q.c.id),
    )


def _dates(record: Record, *keys: str) -> None:
    """Dates read as text, as the check reads them: a datetime, or the text it cannot use."""
    for key in keys:
        if key in record and record[key] is not None:
            record[key] = parse_naive(record[key]) or record[key]


def _all(conn: Connection, stmt: Any) -> list[Record]:
    return [dict(row) for row in conn.execute(stmt).mappings()]


# ---------------------------------------------------------------- output


def as_dict(facts: Facts) -> Record:
    """The JSON form: one object (times are ISO strings, see the README for their zones)."""
    return {
        "serial": facts.serial,
        "found": facts.found,
        "format": facts.format,
        "registry": facts.registry,
        "registry_error": facts.registry_error,
        "tenants": {
            t.code: {
                "id": t.id,
                "active": t.active,
                "refused": t.refused,
                "error": t.error,
                "tokens": t.tokens,
                "job_ticket_serial": t.job_ticket_serial,
                "outbox": t.outbox,
                "quarantine": t.quarantine,
                "conclusions": t.conclusions,
            }
            for t in facts.tenants
        },
        "notes": facts.notes,
    }


def json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # Decimal and the like
