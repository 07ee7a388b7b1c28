"""Statements of the serial link outbox: claim due rows, link in core, write outcomes.

Built from `outbox_sql` (which holds the dialect differences); every statement
that binds a list is built once per padded size and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Select,
    Update,
    and_,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from bgworkers.db import error_line
from bgworkers.jobs.outbox_sql import (
    CHUNK,
    chunks,
    int_key_lookup,
    list_params,
    lookup_params,
    one_of,
    padded,
    write_transaction,
)
from bgworkers.schema.core import serial_registry as registry
from bgworkers.schema.tenant import serial_link_outbox as outbox

#: Candidates read per row to claim: room to skip rows that other workers hold.
CLAIM_WINDOW = 4
HATTHASILPA = "hatthasilpa"


class CoreUnavailable(Exception):
    """The core database could not be reached or did not answer; nothing was decided."""


class Item(NamedTuple):
    """One claimed outbox row."""

    id: int
    serial: str
    token: int
    retry_count: int


class RegistryState(NamedTuple):
    """A `serial_registry` row as it is after linking."""

    id: int
    tenant_id: int
    production_type: str
    dag_token_id: int | None


def is_registry_key(serial: str) -> bool:
    """Registry keys are at most 64 chars; MySQL PAD SPACE would match 'X ' to 'X'."""
    return 0 < len(serial) <= 64 and serial == serial.strip()


def due(now: datetime | BindParameter[Any]) -> ColumnElement[bool]:
    return and_(
        outbox.c.status == "pending",
        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
    )


_ITEM_COLUMNS = (outbox.c.id, outbox.c.serial_code, outbox.c.dag_token_id, outbox.c.retry_count)


def _items(rows: Iterable[Any]) -> list[Item]:
    return [Item(int(i), str(s), int(t), int(r)) for i, s, t, r in rows]


def due_items(conn: Connection, now: datetime, limit: int) -> list[Item]:
    """Due rows, oldest first, without claiming them (dry run)."""
    return _items(
        conn.execute(
            select(*_ITEM_COLUMNS)
            .where(due(now))
            .order_by(outbox.c.created_at, outbox.c.id)
            .limit(limit)
        ).all()
    )


@functools.lru_cache(maxsize=16)
def _claim_statement(size: int) -> Select[Any]:
    return (
        select(*_ITEM_COLUMNS)
        .where(one_of(outbox.c.id, "id", size), due(bindparam("now", type_=DateTime())))
        .with_for_update(skip_locked=True)
    )


def claim(conn: Connection, now: datetime, limit: int) -> list[Item]:
    """Claim up to `limit` due rows, oldest first, skipping rows another worker holds.

    A plain read picks candidates in order through the (status, next_attempt_at)
    index; the locking read then takes them by primary key, re-checking that they
    are still due, so only claimed rows are ever locked.
    """
    candidates: list[int] = list(
        conn.execute(
            select(outbox.c.id)
            .where(due(now))
            .order_by(outbox.c.created_at, outbox.c.id)
            .limit(limit * CLAIM_WINDOW)
        )
        .scalars()
        .all()
    )
    claimed: list[Item] = []
    position = 0
    while position < len(candidates) and len(claimed) < limit:
        take = min(limit - len(claimed), CHUNK)
        ids = candidates[position : position + take]
        position += take
        size = padded(len(ids))
        claimed += _items(
            conn.execute(_claim_statement(size), {"now": now, **list_params("id", ids, size)}).all()
        )
    rank = {row_id: n for n, row_id in enumerate(candidates)}
    return sorted(claimed, key=lambda item: rank[item.id])


def _first_tokens(items: Sequence[Item]) -> dict[str, int]:
    """Serial -> token of its oldest row (a later row for another token then fails)."""
    tokens: dict[str, int] = {}
    for item in items:
        if is_registry_key(item.serial):
            tokens.setdefault(item.serial, item.token)
    return tokens


@functools.lru_cache(maxsize=32)
def _registry_query(size: int, lock: bool) -> Select[Any]:
    query = select(
        registry.c.serial_code,
        registry.c.id_serial,
        registry.c.tenant_id,
        registry.c.production_type,
        registry.c.dag_token_id,
    ).where(one_of(registry.c.serial_code, "serial", size))
    return query.with_for_update() if lock else query


def _read_registry(
    conn: Connection, serials: Sequence[str], lock: bool = False
) -> dict[str, RegistryState]:
    states = {}
    for part in chunks(serials):
        size = padded(len(part))
        rows: Iterable[Any] = conn.execute(
            _registry_query(size, lock), list_params("serial", part, size)
        ).all()
        for serial, id_serial, tenant_id, ptype, token in rows:
            states[str(serial)] = RegistryState(
                int(id_serial), int(tenant_id), str(ptype), None if token is None else int(token)
            )
    return states


def _linkable(state: RegistryState, tenant_id: int) -> bool:
    return (
        state.tenant_id == tenant_id
        and state.production_type == HATTHASILPA
        and state.dag_token_id is None
    )


def _core_error(exc: OperationalError) -> CoreUnavailable:
    reason = error_line(exc)
    return CoreUnavailable(f"core database: {reason}")


@functools.lru_cache(maxsize=32)
def _link_statement(size: int) -> Update:
    return (
        update(registry)
        .where(
            one_of(registry.c.id_serial, "link_k", size),
            registry.c.tenant_id == bindparam("link_tenant"),
            registry.c.dag_token_id.is_(None),
            registry.c.production_type == HATTHASILPA,
        )
        .values(
            dag_token_id=int_key_lookup(
                registry.c.id_serial, "link", size, registry.c.dag_token_id.type
            )
        )
    )


def link(core: Engine, tenant_id: int, items: Sequence[Item]) -> dict[str, RegistryState]:
    """Link each serial to its token in core; return the registry state of every serial.

    In one core transaction: read the registry rows of the batch, locked
    (FOR UPDATE; SQLite's write lock), then one UPDATE per chunk of the linkable
    ones, a lookup on the primary key giving each its token, still guarded by the
    tenant, the production type and `dag_token_id IS NULL`.  An existing link is
    never overwritten, so running it again after a crash changes nothing.  Should
    an UPDATE match fewer rows than were read as linkable, the registry is read
    again and that state decides.
    """
    tokens = _first_tokens(items)
    if not tokens:
        return {}
    try:
        with write_transaction(core) as conn:
            # ascending serials: concurrent workers lock shared rows in one order
            states = _read_registry(conn, sorted(tokens), lock=True)
            linkable = [
                (state.id, tokens[serial])
                for serial, state in states.items()
                if _linkable(state, tenant_id)
            ]
            matched = 0
            for part in chunks(linkable):
                size = padded(len(part))
                params = {"link_tenant": tenant_id, **lookup_params("link", part, size)}
                matched += conn.execute(_link_statement(size), params).rowcount
            if matched != len(linkable):
                return _read_registry(conn, list(tokens))
    except OperationalError as exc:
        raise _core_error(exc) from exc
    return {
        serial: _linked(state, tokens[serial]) if _linkable(state, tenant_id) else state
        for serial, state in states.items()
    }


def _linked(state: RegistryState, token: int) -> RegistryState:
    return RegistryState(state.id, state.tenant_id, state.production_type, token)


def simulate_link(core: Engine, tenant_id: int, items: Sequence[Item]) -> dict[str, RegistryState]:
    """What `link` would return, from a plain read of the registry (dry run)."""
    tokens = _first_tokens(items)
    try:
        with core.connect() as conn:
            states = _read_registry(conn, list(tokens))
    except OperationalError as exc:
        raise _core_error(exc) from exc
    return {
        serial: _linked(state, tokens[serial]) if _linkable(state, tenant_id) else state
        for serial, state in states.items()
    }


@functools.lru_cache(maxsize=16)
def _done_statement(size: int) -> Update:
    return (
        update(outbox)
        .where(one_of(outbox.c.id, "id", size), outbox.c.status == "pending")
        .values(
            status="done",
            next_attempt_at=None,
            updated_at=bindparam("now", type_=outbox.c.updated_at.type),
        )
    )


@functools.lru_cache(maxsize=16)
def _failure_statement(size: int) -> Update:
    return (
        update(outbox)
        .where(one_of(outbox.c.id, "status_k", size), outbox.c.status == "pending")
        .values(
            status=int_key_lookup(outbox.c.id, "status", size, outbox.c.status.type),
            last_error=int_key_lookup(outbox.c.id, "error", size, outbox.c.last_error.type),
            next_attempt_at=int_key_lookup(
                outbox.c.id, "retry_at", size, outbox.c.next_attempt_at.type
            ),
            retry_count=outbox.c.retry_count + 1,
            updated_at=bindparam("now", type_=outbox.c.updated_at.type),
        )
    )


def record(
    conn: Connection,
    done: Sequence[int],
    failed: Mapping[int, tuple[str, str, datetime | None]],
    now: datetime,
) -> None:
    """Write the outcome of claimed rows: a few set-based UPDATEs, guarded by `pending`."""
    for part in chunks(done):
        size = padded(len(part))
        conn.execute(_done_statement(size), {"now": now, **list_params("id", part, size)})
    for part in chunks(list(failed)):
        size = padded(len(part))
        params: dict[str, Any] = {"now": now}
        for field, name in enumerate(("status", "error", "retry_at")):
            params.update(lookup_params(name, [(i, failed[i][field]) for i in part], size))
        conn.execute(_failure_statement(size), params)
