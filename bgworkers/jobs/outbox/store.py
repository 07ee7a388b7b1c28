"""Statements of the serial link outbox: claim due rows, link in core, write outcomes.

Every batch is bound as one JSON parameter (`outbox_sql.json_rows`), so each
step is one statement whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    String,
    and_,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import OperationalError

from bgworkers.db import error_line
from bgworkers.jobs.outbox.sql import ids_of, json_rows, write_transaction
from bgworkers.jobs.serials.format import key_problem
from bgworkers.schema.core import serial_registry as registry
from bgworkers.schema.tenant import serial_link_outbox as outbox

#: Candidates read per row to claim: room to skip rows that other workers hold.
CLAIM_WINDOW = 4
HATTHASILPA = "hatthasilpa"


class CoreUnavailable(Exception):
    """The core database could not be reached or did not answer; nothing was decided."""


class Item(NamedTuple):
    """One claimed outbox row, as read: `serial` and `token` may be NULL (see `row_problem`)."""

    id: int
    serial: str | None
    token: int | None
    retry_count: int
    #: why the row can never succeed (`row_problem`), judged once when it is read
    problem: str | None = None


class RegistryState(NamedTuple):
    """A `serial_registry` row as it is after linking."""

    tenant_id: int
    production_type: str
    dag_token_id: int | None


def is_registry_key(serial: str) -> bool:
    """Registry keys are at most 64 chars; MySQL PAD SPACE would match 'X ' to 'X'."""
    return 0 < len(serial) <= 64 and serial == serial.strip()


def row_problem(item: Item) -> str | None:
    """Why an outbox row can never succeed as read (a poison row), or None.

    NULL or non-positive token; NULL serial, or one with control characters or
    bytes that are not UTF-8.  Such a serial never reaches the JSON binding: on
    SQLite `->>` stops at U+0000, so 'X<NUL>Y' would link the registry row 'X'.
    """
    token, serial = item.token, item.serial
    if token is not None and token > 0 and serial is not None and serial.isprintable():
        return None  # the fast path, for nearly every row
    if token is None:
        return "dag_token_id is NULL"
    if token <= 0:
        return f"dag_token_id is not a token id ({token})"
    problem = key_problem(serial)
    return None if problem is None else f"serial_code {problem}"


def linkable(item: Item) -> tuple[str, int] | None:
    """(serial, token) when the row may be sent to the registry, else None."""
    serial, token = item.serial, item.token
    if serial is None or token is None or item.problem is not None:
        return None
    return (serial, token) if is_registry_key(serial) else None


def due(now: datetime | BindParameter[Any]) -> ColumnElement[bool]:
    return and_(
        outbox.c.status == "pending",
        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
    )


_ITEM_COLUMNS = (outbox.c.id, outbox.c.serial_code, outbox.c.dag_token_id, outbox.c.retry_count)


def _items(rows: Iterable[Any]) -> list[Item]:
    """Items as read, each judged by `row_problem`; NULL serial or token stays None (a
    NULL retry_count is 0 attempts)."""
    items = []
    for i, s, t, r in rows:
        token = None if t is None else int(t)
        item = Item(int(i), s, token, int(r or 0))
        if token is None or token <= 0 or s is None or not s.isprintable():
            item = item._replace(problem=row_problem(item))
        items.append(item)
    return items


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


_CANDIDATES = ids_of("candidates")
_CLAIM = (
    select(*_ITEM_COLUMNS)
    .select_from(_CANDIDATES.join(outbox, outbox.c.id == _CANDIDATES.c.id))
    .where(due(bindparam("now", type_=DateTime())))
    .with_for_update(skip_locked=True)
)


def claim(conn: Connection, now: datetime, limit: int) -> list[Item]:
    """Claim up to `limit` due rows, oldest first, skipping rows another worker holds.

    A plain read picks candidates in order through the (status, next_attempt_at)
    index; the locking read then takes them by primary key, re-checking that they
    are still due, as many as are still wanted at a time, so only claimed rows
    are ever locked.
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
        ids = candidates[position : position + limit - len(claimed)]
        position += len(ids)
        params = {"now": now, **_CANDIDATES.bind(conn, [(i,) for i in ids])}
        claimed += _items(conn.execute(_CLAIM, params).all())
    rank = {row_id: n for n, row_id in enumerate(candidates)}
    return sorted(claimed, key=lambda item: rank[item.id])


def _first_tokens(items: Sequence[Item]) -> dict[str, int]:
    """Serial -> token of its oldest row (a later row for another token then fails)."""
    tokens: dict[str, int] = {}
    for item in items:
        if (pair := linkable(item)) is not None:
            tokens.setdefault(pair[0], pair[1])
    return tokens


_LINKS = json_rows("links", ("serial", registry.c.serial_code.type), ("token", BigInteger()))
_LINK = (
    update(registry)
    .where(
        registry.c.serial_code == _LINKS.c.serial,
        registry.c.tenant_id == bindparam("tenant"),
        registry.c.dag_token_id.is_(None),
        registry.c.production_type == HATTHASILPA,
    )
    .values(dag_token_id=_LINKS.c.token)
)
_STATES = select(
    registry.c.serial_code,
    registry.c.tenant_id,
    # read as plain text: the Enum result processor would cost more than the read
    type_coerce(registry.c.production_type, String()),
    registry.c.dag_token_id,
).select_from(_LINKS.join(registry, registry.c.serial_code == _LINKS.c.serial))


def _read_registry(
    conn: Connection, links: Mapping[str, str], sent: Iterable[str]
) -> dict[str, RegistryState]:
    """Registry state by serial, only for rows whose serial_code is byte for byte one sent.

    A second guard behind `row_problem`: a key the JSON binding or a collation
    changed on the way (SQLite `->>` stops at U+0000; PAD SPACE) finds a row of
    another serial, which must never count as this serial's state.
    """
    wanted = set(sent)
    rows: Iterable[Any] = conn.execute(_STATES, links)
    return {
        serial: RegistryState(int(tenant), str(ptype), None if token is None else int(token))
        for serial, tenant, ptype, token in rows
        if serial in wanted
    }


def _core_error(exc: OperationalError) -> CoreUnavailable:
    return CoreUnavailable(f"core database: {error_line(exc)}")


def _bind_links(conn: Connection, tokens: Mapping[str, int]) -> dict[str, str]:
    unsafe = (
        []
        if "".join(tokens).isprintable()
        else [serial for serial in tokens if key_problem(serial) is not None]
    )
    if unsafe:  # `linkable` keeps them out; a JSON function could change them on the way
        raise ValueError(f"{len(unsafe)} serial(s) with control characters sent to the registry")
    # ascending serials: concurrent workers lock shared registry rows in one order
    return _LINKS.bind(conn, sorted(tokens.items()))


def link(core: Engine, tenant_id: int, items: Sequence[Item]) -> dict[str, RegistryState]:
    """Link each serial to its token in core; return the registry state of every serial.

    One UPDATE in one core transaction links every serial of the batch to its
    token, guarded by the tenant, the production type and `dag_token_id IS
    NULL`: an existing link is never overwritten, so running it again after a
    crash changes nothing.  When it linked every serial, that is their state;
    otherwise the registry rows are read back in the same transaction and decide.
    """
    tokens = _first_tokens(items)
    if not tokens:
        return {}
    try:
        with write_transaction(core) as conn:
            links = _bind_links(conn, tokens)
            if conn.execute(_LINK, {"tenant": tenant_id, **links}).rowcount == len(tokens):
                return {serial: _linked(tenant_id, token) for serial, token in tokens.items()}
            return _read_registry(conn, links, tokens)
    except OperationalError as exc:
        raise _core_error(exc) from exc


def simulate_link(core: Engine, tenant_id: int, items: Sequence[Item]) -> dict[str, RegistryState]:
    """What `link` would return, from a plain read of the registry (dry run)."""
    tokens = _first_tokens(items)
    try:
        with core.connect() as conn:
            states = _read_registry(conn, _bind_links(conn, tokens), tokens)
    except OperationalError as exc:
        raise _core_error(exc) from exc
    return {
        serial: _linked(tenant_id, tokens[serial]) if _linkable(state, tenant_id) else state
        for serial, state in states.items()
    }


def _linked(tenant_id: int, token: int) -> RegistryState:
    return RegistryState(tenant_id, HATTHASILPA, token)


def _linkable(state: RegistryState, tenant_id: int) -> bool:
    return (
        state.tenant_id == tenant_id
        and state.production_type == HATTHASILPA
        and state.dag_token_id is None
    )


_DONE_IDS = ids_of("done")
_DONE = (
    update(outbox)
    .where(outbox.c.id == _DONE_IDS.c.id, outbox.c.status == "pending")
    .values(
        status="done",
        next_attempt_at=None,
        updated_at=bindparam("now", type_=outbox.c.updated_at.type),
    )
)
_FAILURES = json_rows(
    "failures",
    ("id", BigInteger()),
    ("status", String(16)),
    ("error", outbox.c.last_error.type),
    ("retry_at", outbox.c.next_attempt_at.type),
)
_FAILED = (
    update(outbox)
    .where(outbox.c.id == _FAILURES.c.id, outbox.c.status == "pending")
    .values(
        status=_FAILURES.c.status,
        last_error=_FAILURES.c.error,
        next_attempt_at=_FAILURES.c.retry_at,
        retry_count=func.coalesce(outbox.c.retry_count, 0) + 1,
        updated_at=bindparam("now", type_=outbox.c.updated_at.type),
    )
)


def record(
    conn: Connection,
    done: Sequence[int],
    failed: Mapping[int, tuple[str, str, datetime | None]],
    now: datetime,
) -> None:
    """Write the outcome of claimed rows: two set-based UPDATEs, guarded by `pending`."""
    if done:
        conn.execute(_DONE, {"now": now, **_DONE_IDS.bind(conn, [(i,) for i in done])})
    if failed:
        rows = [(i, *outcome) for i, outcome in failed.items()]
        conn.execute(_FAILED, {"now": now, **_FAILURES.bind(conn, rows)})
