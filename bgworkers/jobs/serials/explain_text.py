"""`bgworkers explain`: the facts gathered (`explain.gather`) as JSON, or in human form:
one section for core, one per tenant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.engine.clock import Clock, SystemClock
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs.serials.explain import (
    BadInput,
    Facts,
    Out,
    TenantFacts,
    as_dict,
    gather,
    json_value,
)
from bgworkers.jobs.serials.format import Kind
from bgworkers.settings import Settings

Record = dict[str, Any]

HASH_CHECK = {
    "right": "right (salt {key})",
    "wrong": "WRONG: does not sign this serial (salt {key})",
    "no_salt": "not checkable: no salt for {key}",
    "not_configured": "not checked: no salts configured",
}


def explain(
    settings: Settings,
    dbs: Databases,
    serial: str,
    tenant_code: str | None,
    out: Out,
    as_json: bool = False,
    clock: Clock | None = None,
) -> int:
    """Print what is known about `serial` and what the check would conclude; the exit status."""
    try:
        facts = gather(settings, dbs, serial, tenant_code, clock or SystemClock())
    except BadInput as exc:
        out(f"bgworkers explain: {exc}")
        return 2
    except SQLAlchemyError as exc:
        out(f"core: FAILED: {error_line(exc)}")
        return 1
    if as_json:
        out(json.dumps(as_dict(facts), default=json_value, ensure_ascii=False))
    else:
        for line in render(facts, settings.erp.timezone):
            out(line)
    return 0 if facts.found else 1


def show(value: str) -> str:
    """A value as typed, quoted when blanks or unprintable characters would hide in it."""
    return value if value.isprintable() and value.strip() == value and value else repr(value)


def _at(value: datetime | str | None, zone: str = "UTC") -> str:
    if isinstance(value, str):  # a stored value that is no usable date
        return f"{show(value)} (not a date)"
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def render(facts: Facts, erp_timezone: str) -> Iterator[str]:
    yield f"serial {show(facts.serial)}"
    kind = Kind(facts.format["kind"])
    yield f"  format: {'legacy' if kind.is_legacy else kind} ({facts.format['detail']})"
    for note in facts.notes:
        yield f"  note: {note}"
    yield ""
    yield "core serial_registry"
    yield from _registry(facts)
    for tenant in facts.tenants:
        yield ""
        yield from _tenant(tenant, erp_timezone)
    if not facts.found:
        yield ""
        yield (
            "nothing is known about this serial: no registry row, no tenant row"
            + (" (some databases could not be read)" if _incomplete(facts) else "")
        )


def _incomplete(facts: Facts) -> bool:
    return facts.registry_error is not None or any(t.error for t in facts.tenants)


def _registry(facts: Facts) -> Iterator[str]:
    reg = facts.registry
    if facts.registry_error is not None:
        yield f"  FAILED: {facts.registry_error} (registry and hash checks skipped)"
        return
    if reg is None:
        yield "  none: no row with exactly this serial_code"
        return
    owner = reg["tenant_code"] or "? (no such organization)"
    inactive = "" if reg["tenant_active"] or reg["tenant_code"] is None else ", not active"
    yield (
        f"  id {reg['id_serial']}: tenant {owner} (id {reg['tenant_id']}{inactive}), "
        f"org_code {reg['org_code']}, {reg['production_type']}, sku {reg['sku'] or '-'}, "
        f"status {reg['status']}, scope {reg['serial_scope']}, created {_at(reg['created_at'])}"
    )
    link = "none" if reg["dag_token_id"] is None else f"token {reg['dag_token_id']}"
    yield (
        f"    core link (dag_token_id): {link}; job_ticket_id {reg['job_ticket_id'] or '-'}; "
        f"checksum column {reg['checksum'] or '-'}"
    )
    key = f"{reg['production_type']}:{reg['hash_salt_version']}"
    yield f"    hash signature: {HASH_CHECK[reg['hash_check']].format(key=key)}"


def _tenant(tenant: TenantFacts, erp_timezone: str) -> Iterator[str]:
    head = f"tenant {tenant.code} (id {tenant.id}{'' if tenant.active else ', not active'})"
    if tenant.refused:
        yield f"{head}: REFUSED, not read: {tenant.error}"
        return
    if tenant.error is not None:
        yield f"{head}: FAILED: {tenant.error}"
        return
    if not tenant.known:
        yield f"{head}: nothing carries this serial"
        return
    yield head
    yield from _tokens(tenant.tokens, erp_timezone)
    yield from _job_ticket_serial(tenant.job_ticket_serial)
    yield from _outbox(tenant.outbox)
    yield from _quarantine(tenant.quarantine)
    yield "  the check would conclude:"
    if not tenant.conclusions:
        yield "    nothing: no token and no job-ticket serial carries it"
    for c in tenant.conclusions:
        yield (
            f"    {c['source_table']} {c['source_id']}: {c['outcome']} ({c['detail']}): "
            f"{c['action']}"
        )


def _tokens(tokens: list[Record], erp_timezone: str) -> Iterator[str]:
    if not tokens:
        yield "  flow_token: none"
        return
    yield f"  flow_token (spawned_at in ERP local time, {erp_timezone}):"
    for t in tokens:
        node = (
            "-"
            if t["current_node_id"] is None
            else (f"{t['current_node_id']} {t['node_code'] or ''}".rstrip())
        )
        yield (
            f"    id {t['id_token']}  {t['token_type']}  {t['status']}  node {node}  "
            f"spawned {_at(t['spawned_at'], '')}"
        )


def _job_ticket_serial(row: Record | None) -> Iterator[str]:
    if row is None:
        yield "  job_ticket_serial: none"
        return
    ticket = f"{row['ticket_code'] or '?'} ({row['ticket_status'] or 'no such ticket'})"
    link = (
        "not linked"
        if row["spawned_token_id"] is None
        else f"linked to token {row['spawned_token_id']} at {_at(row['spawned_at'])}"
    )
    yield (
        f"  job_ticket_serial: id {row['id_serial']}, ticket {row['id_job_ticket']} {ticket}, "
        f"sequence {row['sequence_no']}, generated {_at(row['generated_at'])}, {link}"
    )


def _outbox(rows: list[Record]) -> Iterator[str]:
    if not rows:
        yield "  serial_link_outbox: none"
        return
    yield "  serial_link_outbox:"
    for r in rows:
        error = f"  last error: {r['last_error']}" if r["last_error"] else ""
        yield (
            f"    id {r['id']}  token {r['dag_token_id']}  {r['status']}  "
            f"retries {r['retry_count']}  created {_at(r['created_at'])}  "
            f"next attempt {_at(r['next_attempt_at'])}{error}"
        )


def _quarantine(rows: list[Record]) -> Iterator[str]:
    if not rows:
        yield "  serial_quarantine: none"
        return
    yield "  serial_quarantine:"
    for r in rows:
        state = (
            f"resolved {_at(r['resolved_at'])}"
            if r["resolved_at"] is not None
            else "open, still found"
            if r.get("still_found")
            else "open, no longer found by the check"
        )
        yield (
            f"    id {r['id']}  {r['reason']}  {r['source_table']} {r['source_id']}  "
            f"detected {_at(r['detected_at'])}  {state}"
        )
