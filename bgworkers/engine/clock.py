"""The one source of wall-clock time; tests substitute a fixed or moving clock.

Also the conversions between the aware times of the code and the naive ones of
the databases: serial tables and the run history hold naive UTC, the ERP's other
tables naive local time of the ERP.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Protocol


def naive_utc(at: datetime, zone: tzinfo = UTC) -> datetime:
    """`at` as the databases store UTC: naive.  An aware time is converted; a naive one
    is a local time of `zone` (by default UTC already)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at.astimezone(UTC).replace(tzinfo=None)


def aware_utc(at: datetime) -> datetime:
    """`at` as aware UTC; a naive time is UTC, as the databases store it."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def naive_local(at: datetime, zone: tzinfo) -> datetime:
    """`at` (aware, or naive UTC) as a naive local time of `zone`."""
    return aware_utc(at).astimezone(zone).replace(tzinfo=None)


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC now."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at
