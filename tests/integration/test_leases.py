"""Leases on SQLite and MariaDB: exclusive, expiring, renewed, lost, taken over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import DbUrls, build_world, write_settings

from bgworkers.engine.job import LeaseLost
from bgworkers.engine.leases import Leases
from bgworkers.engine.tenancy import Databases


@pytest.fixture
def dbs(db_urls: DbUrls, tmp_path: Path) -> Iterator[Databases]:
    world = build_world(write_settings(tmp_path / "s.toml", db_urls))
    yield world.dbs
    world.dbs.dispose()


class Monotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def leases(
    dbs: Databases, holder: str, ttl: float = 30.0, monotonic: Callable[[], float] = time.monotonic
) -> Leases:
    return Leases(lambda: dbs.coordination, holder, ttl, monotonic)


def test_one_holder_per_group_and_tenant(dbs: Databases) -> None:
    a, b = leases(dbs, "host-a:1"), leases(dbs, "host-b:2")
    first = a.acquire("serials", "DEFAULT", "run-1")
    assert first is not None
    assert b.acquire("serials", "DEFAULT", "run-2") is None
    assert a.acquire("serials", "DEFAULT", "run-3") is None  # same process, other run
    assert b.acquire("serials", "maison_atelier", "run-4") is not None
    assert b.acquire("dashboard_fast", "DEFAULT", "run-5") is not None
    a.release(first)
    assert b.acquire("serials", "DEFAULT", "run-6") is not None


def test_a_lease_unrenewed_for_a_whole_ttl_fails_its_check_until_renewed(
    dbs: Databases, tmp_path: Path
) -> None:
    clock = Monotonic()
    engine = [dbs.coordination]
    holder = Leases(lambda: engine[0], "host-a:1", 30.0, clock)
    lease = holder.acquire("serials", "DEFAULT", "run-1")
    assert lease is not None
    clock.advance(29.9)
    lease.check()
    clock.advance(0.1)
    with pytest.raises(LeaseLost, match="not renewed for 30s"):
        lease.check()
    holder.renew_all()  # the row is still ours on the database clock: renewed now
    lease.check()
    clock.advance(20)
    unreachable = sa.create_engine(f"sqlite:///{tmp_path}/missing/coordination.db")
    engine[0] = unreachable
    holder.renew_all()  # fails: the lease still counts from the last renewal
    lease.check()
    clock.advance(10)
    with pytest.raises(LeaseLost, match="not renewed"):
        lease.check()
    assert not lease.lost.is_set()  # expired here, not taken over
    unreachable.dispose()


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(dbs: Databases) -> None:
    clock = Monotonic()
    ttl = 0.5  # on the database clock: the takeover waits for it to pass for real
    a, b = leases(dbs, "host-a:1", ttl, clock), leases(dbs, "host-b:2", ttl)
    old = a.acquire("serials", "DEFAULT", "run-a")
    assert old is not None
    assert b.acquire("serials", "DEFAULT", "run-b") is None
    clock.advance(ttl)
    with pytest.raises(LeaseLost, match="not renewed"):
        old.check()  # a whole TTL without renewal: stop before writing
    deadline = time.monotonic() + 10
    while (new := b.acquire("serials", "DEFAULT", "run-b")) is None:
        assert time.monotonic() < deadline, "the expired lease was never taken over"
        time.sleep(0.05)
    assert new.previous == "run-a"
    a.renew_all()
    assert old.lost.is_set()
    with pytest.raises(LeaseLost, match="taken over"):
        old.check()
    new.check()
    a.release(old)  # releasing a lost lease must not free the new holder's
    assert leases(dbs, "host-c:3").acquire("serials", "DEFAULT", "run-c") is None


def test_renewal_keeps_a_long_run_exclusive(dbs: Databases) -> None:
    a, b = leases(dbs, "host-a:1", ttl=0.9), leases(dbs, "host-b:2", ttl=0.9)
    a.start()
    try:
        held = a.acquire("serials", "DEFAULT", "run-a")
        assert held is not None
        for _ in range(4):  # two TTLs
            time.sleep(0.45)
            assert b.acquire("serials", "DEFAULT", "run-b") is None
            held.check()
    finally:
        a.stop()


def test_racing_threads_one_winner(dbs: Databases) -> None:
    contenders = [leases(dbs, f"host:{i}") for i in range(8)]
    barrier = threading.Barrier(len(contenders))
    wins: list[str] = []

    def race(i: int) -> None:
        barrier.wait()
        if contenders[i].acquire("serials", "DEFAULT", f"run-{i}") is not None:
            wins.append(f"run-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_a_lease_released_while_it_is_being_renewed_is_not_lost(dbs: Databases) -> None:
    """The run ends (release) between the renewer's list of leases and its UPDATE."""
    from structlog.testing import capture_logs

    holder = leases(dbs, "host-a:1")
    lease = holder.acquire("serials", "DEFAULT", "run-1")
    assert lease is not None
    engine = dbs.coordination

    once = threading.Event()

    def release_first(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE BGW_LEASE") and not once.is_set():
            once.set()
            done = threading.Thread(target=holder.release, args=(lease,))
            done.start()
            done.join()

    sa.event.listen(engine, "before_cursor_execute", release_first)
    with capture_logs() as logs:
        holder.renew_all()
    sa.event.remove(engine, "before_cursor_execute", release_first)
    assert once.is_set()
    assert not lease.lost.is_set()
    assert [e for e in logs if e["event"] == "lease_lost"] == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bgw_lease")).scalar_one() == 0
