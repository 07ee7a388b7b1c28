"""Leases: a (lease group, tenant) is held by at most one run, across threads, processes, hosts.

A lease is a row of `bgw_lease` whose `expires_at` is on the database clock.
Taking one is a single INSERT (free) or a single guarded UPDATE (expired);
both are atomic, so two contenders cannot both win. The holder renews every
third of the TTL from a background thread; a run whose renewal failed, or
that has not renewed for a whole TTL, has lost its lease and must stop before
its next write (`Lease.check`).  That local check reads a monotonic clock, given to
`Leases` (time.monotonic unless a test moves its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bgworkers.db import db_now, error_line, limits, transaction
from bgworkers.engine.job import LeaseLost
from bgworkers.engine.logs import get_logger
from bgworkers.schema.own import lease as lease_table

log = get_logger("bgworkers.leases")


@dataclass
class Lease:
    group: str
    tenant: str
    token: str
    ttl: float
    monotonic: Callable[[], float] = time.monotonic  # the clock of `renewed` and `check`
    renewed: float = field(init=False)  # monotonic time of the last renewal (or acquiring)
    lost: threading.Event = field(default_factory=threading.Event)
    previous: str | None = None  # token of the expired holder this lease took over from

    def __post_init__(self) -> None:
        self.renewed = self.monotonic()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"lease {self.group}/{self.tenant} was taken over or expired")
        if self.monotonic() - self.renewed >= self.ttl:
            raise LeaseLost(f"lease {self.group}/{self.tenant} not renewed for {self.ttl:g}s")


class Leases:
    """Acquire, renew (in the background) and release leases in the coordination DB."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        holder: str,
        ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self.holder = holder
        self.ttl = ttl
        self.monotonic = monotonic
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _where(self, lease: Lease) -> ColumnElement[bool]:
        t = lease_table.c
        return and_(t.lease_group == lease.group, t.tenant == lease.tenant, t.token == lease.token)

    def acquire(
        self, group: str, tenant: str, token: str, conn: Connection | None = None
    ) -> Lease | None:
        """The lease, or None when another run holds it.  In `conn`'s transaction when
        given (the lease is then held, and renewed, only if that transaction commits:
        call `hold` after the commit)."""
        t = lease_table.c
        bind = conn if conn is not None else self._engine()
        values = {
            "holder": self.holder,
            "token": token,
            "acquired_at": db_now(bind),
            "expires_at": db_now(bind, self.ttl),
        }
        lease = Lease(group, tenant, token, self.ttl, self.monotonic)
        with transaction(bind) as tx:
            try:
                tx.execute(insert(lease_table).values(lease_group=group, tenant=tenant, **values))
            except IntegrityError:  # only this statement failed: the transaction goes on
                old = tx.execute(
                    select(t.token, t.holder).where(
                        t.lease_group == group, t.tenant == tenant, t.expires_at < db_now(tx)
                    )
                ).first()
                if old is None:
                    return None
                taken = tx.execute(
                    update(lease_table)
                    .where(
                        t.lease_group == group,
                        t.tenant == tenant,
                        t.token == old.token,
                        t.expires_at < db_now(tx),
                    )
                    .values(**values)
                ).rowcount
                if taken != 1:
                    return None
                lease.previous = old.token
                log.warning(
                    "lease_taken_over", lease_group=group, tenant=tenant, previous_holder=old.holder
                )
        if conn is None:
            self.hold(lease)
        return lease

    def hold(self, lease: Lease) -> None:
        """Renew `lease` in the background from now on (its acquiring transaction committed)."""
        with self._lock:
            self._held[lease.token] = lease

    def forget(self, lease: Lease) -> None:
        """Stop renewing `lease`: its run is over, whether or not its release is written."""
        with self._lock:
            self._held.pop(lease.token, None)

    def release(self, lease: Lease, conn: Connection | None = None) -> None:
        """Stop renewing and delete the lease (in `conn`'s transaction when given).  A
        failed delete is logged, not raised, when in a transaction of our own: the
        lease expires by itself after the TTL."""
        self.forget(lease)
        try:
            with transaction(conn or self._engine()) as tx:
                tx.execute(delete(lease_table).where(self._where(lease)))
        except SQLAlchemyError as exc:
            if conn is not None:
                raise
            log.warning(
                "lease_release_failed",
                lease_group=lease.group,
                tenant=lease.tenant,
                error=error_line(exc),
            )

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        engine = self._engine()
        for lease in held:
            started = self.monotonic()
            try:  # a renewal later than a third of the TTL is worth nothing more
                with limits.limited(self.ttl / 3), engine.begin() as conn:
                    renewed = conn.execute(
                        update(lease_table)
                        .where(self._where(lease))
                        .values(expires_at=db_now(engine, self.ttl))
                    ).rowcount
            except (SQLAlchemyError, limits.RunTimedOut) as exc:
                log.warning(
                    "lease_renew_failed",
                    lease_group=lease.group,
                    tenant=lease.tenant,
                    error=error_line(exc),
                )
                continue  # Lease.check() fails once a whole TTL passed without renewal
            if renewed == 1:
                lease.renewed = started
                continue
            with self._lock:
                released = lease.token not in self._held
            if not released:  # not the run ending meanwhile: another holder has it
                lease.lost.set()
                log.error(
                    "lease_lost", lease_group=lease.group, tenant=lease.tenant, run_id=lease.token
                )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lease-renewer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
