"""Job `serial_consistency`: links, formats and orphans of serial numbers, per tenant.

Two passes over the tenant database, each in key order and in pages of
`chunk_size` rows, so memory stays flat however many serials there are:

1. job-ticket serials without a tenant link (id_serial order): link the lowest
   live piece token that carries the serial, or quarantine the row as orphaned
   when no token carries it and its ticket is finished or it is too old;
2. live tokens with a serial (id_token order): classify the serial (standard,
   checksum failure, exempt or component = legacy, invalid format), find the
   serials shared by live piece tokens, and check the core registry rows of the
   page's standard serials: missing core link (enqueued to the outbox),
   registry mismatch, unregistered, hash signature (when salts are configured).

Quarantine only records; source rows are never changed by it.  A dry run
writes nothing and counts what it would fix (`fixed`) and quarantine
(`quarantined`).

Poison rows: a row the check cannot read or use is skipped, named in a
`bad_row` warning (table, id, problem) and counted in `bad_rows`; the rest of
the tenant's work goes on.  Bad are: a serial that is NULL, holds a control
character or bytes that are not UTF-8 (`serials.key_problem`); a date the rule
needs that is NULL, zero or outside 1970..9999 (dates are read as text and
parsed per row, `parse_naive`); a serial to quarantine that is longer than
`serial_quarantine.serial_code` holds (never truncated).  A bad row is counted
in no other counter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line
from bgworkers.engine.clock import naive_utc
from bgworkers.engine.job import Counters, JobContext
from bgworkers.jobs.serials.checks import (
    FINISHED_TICKET_STATUSES,
    QUARANTINE_SERIAL_CHARS,
    Done,
    Page,
    Quarantine,
    live_tokens,
    quarantine_serial_chars,
    registry_rows,
    token_spawned_at,
    unlinked_serials,
    write_page,
)
from bgworkers.jobs.serials.format import (
    Kind,
    classify,
    compile_patterns,
    hash_ok,
    key_problem,
    shown,
)
from bgworkers.settings import SerialConsistencySettings

COUNTERS = (
    "missing_tenant_links",
    "missing_core_links",
    "invalid_formats",
    "orphaned",
    "duplicates",
    "mismatches",
    "unregistered",
    "legacy",
    "fixed",
    "quarantined",
    "bad_rows",
    "errors",
)
_FIRST_KEY = -(2**63)
#: `bad_row` events per tenant run; past it, one `bad_rows_not_named` event gives the rest.
BAD_ROWS_NAMED = 100
#: Dates outside this range are poison: zero dates, year 1 (which overflows when
#: moved between time zones), and anything no ERP row was ever stamped with.
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(9999, 12, 30)

# ---------------------------------------------------------------- rules (pure)

#: The counter each outcome adds to.  Outcomes are quarantine reasons, except
#: `legacy` (left alone), `missing_core_link` (enqueued) and `missing_tenant_link` (set).
OUTCOME_COUNTERS = {
    "legacy": "legacy",
    "invalid_format": "invalid_formats",
    "checksum_fail": "invalid_formats",
    "hash_fail": "invalid_formats",
    "duplicate": "duplicates",
    "unregistered": "unregistered",
    "registry_mismatch": "mismatches",
    "missing_core_link": "missing_core_links",
    "missing_tenant_link": "missing_tenant_links",
    "orphaned": "orphaned",
}
NOT_QUARANTINED = frozenset({"legacy", "missing_core_link", "missing_tenant_link"})


@dataclass(frozen=True)
class Registered:
    """The tenant's own core registry row of a serial, as the link rules see it."""

    production_type: str
    dag_token_id: int | None


def token_outcomes(
    kind: Kind,
    token_type: str,
    token: int,
    duplicated: bool,
    own: Registered | None,
    hash_failed: bool = False,
    registry_read: bool = True,
) -> list[str]:
    """What the check concludes about one live token carrying a serial, in order.

    `duplicated`: another live piece token carries the serial (piece tokens only);
    `own`: the serial's registry row when it belongs to this tenant; `hash_failed`:
    its signature was checked and is wrong; `registry_read`: False when core could
    not be read, which skips every registry check.
    """
    out: list[str] = []
    if kind.is_legacy:
        out.append("legacy")
    elif kind is not Kind.STANDARD:
        out.append(kind.value)
    if duplicated:
        out.append("duplicate")
    if kind is not Kind.STANDARD or not registry_read:
        return out
    if hash_failed:
        out.append("hash_fail")
    if token_type != "piece" or duplicated:
        return out  # links are checked on unique piece serials only
    if own is None:
        out.append("unregistered")
    elif own.dag_token_id is None:
        if own.production_type == "hatthasilpa":
            out.append("missing_core_link")
    elif own.dag_token_id != token:
        out.append("registry_mismatch")
    return out


def unlinked_outcome(
    first_live_piece: int | None,
    carried: bool,
    ticket_status: str | None,
    generated_at: datetime,
    cutoff: datetime,
) -> str | None:
    """What the check concludes about a job-ticket serial without a tenant link, if anything.

    `first_live_piece`: the lowest live piece token carrying the serial; `carried`:
    any token carries it; `cutoff`: UTC now minus `orphan_after`.
    """
    if first_live_piece is not None:
        return "missing_tenant_link"
    if not carried and (ticket_status in FINISHED_TICKET_STATUSES or generated_at < cutoff):
        return "orphaned"
    return None


def salt_key(production_type: str, salt_version: object) -> str:
    return f"{production_type}:{salt_version}"


def hash_verdict(
    serial: str,
    production_type: str,
    salt_version: object,
    signature: str | None,
    salts: Mapping[str, str],
) -> bool | None:
    """Whether the registry signature of `serial` is right; None: no salt for type:version."""
    salt = salts.get(salt_key(production_type, salt_version))
    return None if salt is None else hash_ok(serial, signature, salt)


def parse_naive(text: str | None) -> datetime | None:
    """A naive DATETIME (UTC or ERP local) read as text (`serial_checks.date_text`), or None
    when it is not one: NULL, a zero date, unparsable, with a time zone, or outside
    1970..9999."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is not None or not EARLIEST <= value <= LATEST:
        return None
    return value


def date_problem(column: str, text: str | None) -> str:
    if text is None:
        return f"{column} is NULL"
    return f"{column} is {shown(text)!r}: not a date between 1970 and 9999"


def run(ctx: JobContext[SerialConsistencySettings]) -> Counters:
    """Check one tenant (ctx.tenant); counters of SPEC section 4 (`tenants` is the runner's)."""
    check = _Check(ctx)
    check.unlinked_serials()
    check.live_tokens()
    check.report()
    return {name: check.counts[name] for name in COUNTERS}


class _Check:
    def __init__(self, ctx: JobContext[SerialConsistencySettings]) -> None:
        settings = ctx.job_settings
        self.ctx, self.settings = ctx, settings
        self.dry_run = ctx.dry_run or settings.dry_run
        self.exempt = compile_patterns(settings.exempt_patterns)
        self.live = list(ctx.settings.erp.live_token_statuses)
        self.dialect = ctx.db.dialect
        self.counts: Counter[str] = Counter()
        self.done = Done()
        self.core_ok = True
        self.salts = {key: salt.get_secret_value() for key, salt in settings.salts.items()}
        self.unverifiable: Counter[str] = Counter()  # hash not checkable: no salt for type:version
        self.quarantine_chars: int | None = None  # read from the table when first needed

    # ------------------------------------------------------------ pass 1

    def unlinked_serials(self) -> None:
        cutoff = self.ctx.utc_now - self.settings.orphan_after
        stmt = unlinked_serials(self.dialect, self.live, self.settings.chunk_size)
        for rows in self._pages(stmt, "id_serial"):
            page = Page()
            links: dict[int, int] = {}  # id_serial -> the token to link
            for row in rows:
                id_serial, serial = int(row.id_serial), row.serial_number
                problem = key_problem(serial)
                if problem is not None:
                    self._bad("job_ticket_serial", id_serial, f"serial_number {problem}", serial)
                    continue
                generated = parse_naive(row.generated_at)
                if (
                    generated is None
                    and row.token is None
                    and not row.carried
                    and row.ticket_status not in FINISHED_TICKET_STATUSES
                ):
                    # only the orphan rule needs the date, and only here
                    self._bad(
                        "job_ticket_serial",
                        id_serial,
                        date_problem("generated_at", row.generated_at),
                        serial,
                    )
                    continue
                outcome = unlinked_outcome(
                    row.token, bool(row.carried), row.ticket_status, generated or cutoff, cutoff
                )
                if outcome == "missing_tenant_link":
                    links[id_serial] = int(row.token)
                elif outcome is not None and self._storable("job_ticket_serial", id_serial, serial):
                    self.counts[OUTCOME_COUNTERS[outcome]] += 1
                    page.quarantine.append(
                        Quarantine(serial, outcome, "job_ticket_serial", id_serial)
                    )
            if links:
                page.links = self._links(links)
            self._write(page)

    def _links(self, links: dict[int, int]) -> list[tuple[int, int, datetime]]:
        """(id_serial, token, spawned_at in UTC) of the links whose token has a usable date."""
        with self.ctx.db.connect() as conn:
            spawned = token_spawned_at(conn, set(links.values()))
        tz = self.ctx.settings.erp.tz  # flow_token holds ERP local time, the links UTC
        out = []
        for id_serial, token in links.items():
            local = parse_naive(spawned.get(token))
            if local is None:
                self._bad(
                    "flow_token",
                    token,
                    date_problem("spawned_at", spawned.get(token)),
                    skipped=f"tenant link of job_ticket_serial {id_serial}",
                )
                continue
            self.counts[OUTCOME_COUNTERS["missing_tenant_link"]] += 1
            out.append((id_serial, token, naive_utc(local, tz)))
        return out

    # ------------------------------------------------------------ pass 2

    def live_tokens(self) -> None:
        stmt = live_tokens(self.dialect, self.live, self.settings.chunk_size)
        for page_rows in self._pages(stmt, "id_token"):
            page = Page()
            # isprintable: the fast path of key_problem, for nearly every row
            rows = [
                row
                for row in page_rows
                if row.serial_number.isprintable() or self._usable_serial(row)
            ]
            kinds = [classify(row.serial_number, self.exempt) for row in rows]
            registry = self._registry(
                {
                    row.serial_number
                    for row, kind in zip(rows, kinds, strict=True)
                    if kind is Kind.STANDARD
                }
            )
            for row, kind in zip(rows, kinds, strict=True):
                serial, token = row.serial_number, int(row.id_token)
                reg = None if registry is None else registry.get(serial)
                own = reg if reg is not None and int(reg.tenant_id) == self.ctx.tenant.id else None
                hash_failed = (
                    kind is Kind.STANDARD and own is not None and self._hash_fails(serial, own)
                )
                link = (
                    None
                    if own is None
                    else Registered(
                        str(own.production_type),
                        None if own.dag_token_id is None else int(own.dag_token_id),
                    )
                )
                outcomes = token_outcomes(
                    kind,
                    row.token_type,
                    token,
                    row.dup_of is not None,
                    link,
                    hash_failed,
                    registry is not None,
                )
                if (
                    len(serial) > QUARANTINE_SERIAL_CHARS
                    and any(o not in NOT_QUARANTINED for o in outcomes)
                    and not self._storable("flow_token", token, serial)
                ):
                    continue
                for outcome in outcomes:
                    self.counts[OUTCOME_COUNTERS[outcome]] += 1
                    if outcome == "missing_core_link":
                        page.enqueue.append((serial, token))
                    elif outcome not in NOT_QUARANTINED:
                        page.quarantine.append(Quarantine(serial, outcome, "flow_token", token))
            self._write(page)

    def _usable_serial(self, row: Row[Any]) -> bool:
        problem = key_problem(row.serial_number)
        if problem is None:
            return True
        self._bad("flow_token", int(row.id_token), f"serial_number {problem}", row.serial_number)
        return False

    # ------------------------------------------------------------ poison rows

    def _storable(self, table: str, row_id: int, serial: str) -> bool:
        """Whether serial_quarantine.serial_code holds `serial`; if not, a bad row."""
        if len(serial) <= QUARANTINE_SERIAL_CHARS:
            return True  # fits every documented install: no need to ask the table
        if self.quarantine_chars is None:
            self.quarantine_chars = quarantine_serial_chars(self.ctx.db)
        if len(serial) <= self.quarantine_chars:
            return True
        self._bad(
            table,
            row_id,
            f"serial_number is {len(serial)} characters, longer than "
            f"serial_quarantine.serial_code holds ({self.quarantine_chars})",
            serial,
            skipped="quarantine (a serial is never truncated)",
        )
        return False

    def _bad(
        self,
        table: str,
        row_id: int,
        problem: str,
        value: str | None = None,
        skipped: str = "the row",
    ) -> None:
        self.counts["bad_rows"] += 1
        if self.counts["bad_rows"] <= BAD_ROWS_NAMED:
            self.ctx.log.warning(
                "bad_row",
                table=table,
                id=row_id,
                problem=problem,
                value=shown(value),
                skipped=skipped,
                dry_run=self.dry_run,
            )

    def _registry(self, serials: set[str]) -> dict[str, Row[Any]] | None:
        """The page's registry rows, or None once core has failed in this run."""
        if not self.core_ok:
            return None
        if not serials:
            return {}
        try:
            return registry_rows(self.ctx.core, serials)
        except SQLAlchemyError as exc:
            self.core_ok = False
            self.counts["errors"] += 1
            reason = error_line(exc)
            self.ctx.part_failed("registry and hash checks (core serial_registry)", reason)
            self.ctx.log.warning(
                "serial_registry_unavailable",
                error=reason,
                skipped="registry and hash checks for the rest of this run",
            )
            return None

    def _hash_fails(self, serial: str, reg: Row[Any]) -> bool:
        if not self.salts:
            return False
        verdict = hash_verdict(
            serial, reg.production_type, reg.hash_salt_version, reg.hash_signature, self.salts
        )
        if verdict is None:
            self.unverifiable[salt_key(reg.production_type, reg.hash_salt_version)] += 1
            return False
        return not verdict

    # ------------------------------------------------------------ plumbing

    def _pages(self, stmt: Select[Any], key: str) -> Iterator[list[Row[Any]]]:
        last: int = _FIRST_KEY
        while True:
            with self.ctx.db.connect() as conn:
                rows = list(conn.execute(stmt, {"last": last}).all())
            if rows:
                yield rows
            if len(rows) < self.settings.chunk_size:
                return
            last = int(getattr(rows[-1], key))

    def _write(self, page: Page) -> None:
        done = write_page(self.ctx.db, page, self.ctx.utc_now, self.dry_run, self.ctx.check_lease)
        self.done.quarantined.update(done.quarantined)
        self.done.enqueued += done.enqueued
        self.done.linked += done.linked
        self.counts["fixed"] += done.enqueued + done.linked
        self.counts["quarantined"] += done.quarantined.total()

    def report(self) -> None:
        if self.counts["bad_rows"] > BAD_ROWS_NAMED:
            self.ctx.log.warning(
                "bad_rows_not_named",
                named=BAD_ROWS_NAMED,
                count=self.counts["bad_rows"] - BAD_ROWS_NAMED,
            )
        if self.unverifiable:
            self.ctx.log.warning(
                "serial_hash_unverifiable",
                serials=self.unverifiable.total(),
                missing_salts=sorted(self.unverifiable),
            )
        if self.counts["fixed"] or self.counts["quarantined"]:
            self.ctx.log.info(
                "serial_consistency_changes",
                dry_run=self.dry_run,
                tenant_links_set=self.done.linked,
                outbox_enqueued=self.done.enqueued,
                quarantined_by_reason=dict(sorted(self.done.quarantined.items())),
            )
