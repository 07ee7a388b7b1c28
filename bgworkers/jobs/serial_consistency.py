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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select
from sqlalchemy.exc import SQLAlchemyError

from bgworkers.jobs.base import Counters, JobContext
from bgworkers.jobs.serial_checks import (
    FINISHED_TICKET_STATUSES,
    Done,
    Page,
    Quarantine,
    live_tokens,
    registry_rows,
    token_spawned_at,
    unlinked_serials,
    write_page,
)
from bgworkers.serials import Kind, classify, compile_patterns, hash_ok
from bgworkers.settings import SerialConsistencySettings

COUNTERS = ("missing_tenant_links", "missing_core_links", "invalid_formats", "orphaned",
            "duplicates", "mismatches", "unregistered", "legacy", "fixed", "quarantined",
            "errors")
#: More new quarantine rows than this in one run is worth a warning.
_FIRST_KEY = -(2**63)




def run(ctx: JobContext) -> Counters:
    """Check one tenant (ctx.tenant); counters of SPEC section 4 (`tenants` is the runner's)."""
    check = _Check(ctx)
    check.unlinked_serials()
    check.live_tokens()
    check.report()
    return {name: check.counts[name] for name in COUNTERS}


class _Check:
    def __init__(self, ctx: JobContext) -> None:
        settings = ctx.job_settings
        if not isinstance(settings, SerialConsistencySettings):
            raise TypeError(f"job {ctx.job!r} has no serial_consistency settings")
        self.ctx, self.settings = ctx, settings
        self.dry_run = ctx.dry_run or settings.dry_run
        self.exempt = compile_patterns(settings.exempt_patterns)
        self.live = list(ctx.settings.erp.live_token_statuses)
        self.dialect = ctx.db.dialect.name
        self.counts: Counter[str] = Counter()
        self.done = Done()
        self.core_ok = True
        self.salts = {key: salt.get_secret_value() for key, salt in settings.salts.items()}
        self.unverifiable: Counter[str] = Counter()  # hash not checkable: no salt for type:version

    # ------------------------------------------------------------ pass 1

    def unlinked_serials(self) -> None:
        cutoff = self.ctx.utc_now - self.settings.orphan_after
        stmt = unlinked_serials(self.dialect, self.live, self.settings.chunk_size)
        for rows in self._pages(stmt, "id_serial"):
            page = Page()
            links: dict[int, int] = {}  # id_serial -> the token to link
            for row in rows:
                if row.token is not None:
                    self.counts["missing_tenant_links"] += 1
                    links[int(row.id_serial)] = int(row.token)
                elif not row.carried and (row.ticket_status in FINISHED_TICKET_STATUSES
                                          or row.generated_at < cutoff):
                    self.counts["orphaned"] += 1
                    page.quarantine.append(Quarantine(
                        row.serial_number, "orphaned", "job_ticket_serial", int(row.id_serial)))
            if links:
                with self.ctx.db.connect() as conn:
                    spawned = token_spawned_at(conn, set(links.values()))
                page.links = [(id_serial, token, self._erp_to_utc(spawned[token]))
                              for id_serial, token in links.items()]
            self._write(page)

    def _erp_to_utc(self, local: datetime) -> datetime:
        """flow_token holds naive ERP local time; job_ticket_serial holds naive UTC."""
        aware = local.replace(tzinfo=self.ctx.settings.erp.tz)
        return aware.astimezone(UTC).replace(tzinfo=None)

    # ------------------------------------------------------------ pass 2

    def live_tokens(self) -> None:
        stmt = live_tokens(self.dialect, self.live, self.settings.chunk_size)
        for rows in self._pages(stmt, "id_token"):
            page = Page()
            kinds = [classify(row.serial_number, self.exempt) for row in rows]
            registry = self._registry(
                {row.serial_number for row, kind in zip(rows, kinds, strict=True)
                 if kind is Kind.STANDARD})
            for row, kind in zip(rows, kinds, strict=True):
                serial, token = row.serial_number, int(row.id_token)
                if kind.is_legacy:
                    self.counts["legacy"] += 1
                elif kind is not Kind.STANDARD:
                    self.counts["invalid_formats"] += 1
                    page.quarantine.append(Quarantine(serial, kind.value, "flow_token", token))
                if row.dup_of is not None:
                    self.counts["duplicates"] += 1
                    page.quarantine.append(Quarantine(serial, "duplicate", "flow_token", token))
                if kind is Kind.STANDARD and registry is not None:
                    self._registry_checks(page, row, registry.get(serial))
            self._write(page)

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
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            self.ctx.log.warning("serial_registry_unavailable", error=reason,
                                 skipped="registry and hash checks for the rest of this run")
            return None

    def _registry_checks(self, page: Page, row: Row[Any], reg: Row[Any] | None) -> None:
        serial, token = row.serial_number, int(row.id_token)
        own = reg if reg is not None and int(reg.tenant_id) == self.ctx.tenant.id else None
        if own is not None and self._hash_fails(serial, own):
            self.counts["invalid_formats"] += 1
            page.quarantine.append(Quarantine(serial, "hash_fail", "flow_token", token))
        if row.token_type != "piece" or row.dup_of is not None:
            return  # links are checked on unique piece serials only
        if own is None:
            self.counts["unregistered"] += 1
            page.quarantine.append(Quarantine(serial, "unregistered", "flow_token", token))
        elif own.dag_token_id is None:
            if own.production_type == "hatthasilpa":
                self.counts["missing_core_links"] += 1
                page.enqueue.append((serial, token))
        elif int(own.dag_token_id) != token:
            self.counts["mismatches"] += 1
            page.quarantine.append(Quarantine(serial, "registry_mismatch", "flow_token", token))

    def _hash_fails(self, serial: str, reg: Row[Any]) -> bool:
        if not self.salts:
            return False
        key = f"{reg.production_type}:{reg.hash_salt_version}"
        salt = self.salts.get(key)
        if salt is None:
            self.unverifiable[key] += 1
            return False
        return not hash_ok(serial, reg.hash_signature, salt)

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
        done = write_page(self.ctx.db, page, self.ctx.utc_now, self.dry_run,
                          self.ctx.check_lease)
        self.done.quarantined.update(done.quarantined)
        self.done.enqueued += done.enqueued
        self.done.linked += done.linked
        self.counts["fixed"] += done.enqueued + done.linked
        self.counts["quarantined"] += done.quarantined.total()

    def report(self) -> None:
        if self.unverifiable:
            self.ctx.log.warning("serial_hash_unverifiable", serials=self.unverifiable.total(),
                                 missing_salts=sorted(self.unverifiable))
        if self.counts["fixed"] or self.counts["quarantined"]:
            self.ctx.log.info(
                "serial_consistency_changes", dry_run=self.dry_run,
                tenant_links_set=self.done.linked, outbox_enqueued=self.done.enqueued,
                quarantined_by_reason=dict(sorted(self.done.quarantined.items())))
