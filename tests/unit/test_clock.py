"""The conversions between aware times and the naive ones the databases hold."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bgworkers.engine.clock import aware_utc, naive_local, naive_utc

BANGKOK = ZoneInfo("Asia/Bangkok")  # UTC+7, no daylight saving


def test_naive_utc() -> None:
    assert naive_utc(datetime(2025, 3, 9, 20, 30, tzinfo=BANGKOK)) == datetime(2025, 3, 9, 13, 30)
    assert naive_utc(datetime(2025, 3, 9, 13, 30, tzinfo=UTC)) == datetime(2025, 3, 9, 13, 30)
    # naive: UTC already, or a local time of the zone given (the ERP's tables)
    assert naive_utc(datetime(2025, 3, 9, 13, 30)) == datetime(2025, 3, 9, 13, 30)
    assert naive_utc(datetime(2025, 3, 10, 3, 0), BANGKOK) == datetime(2025, 3, 9, 20, 0)


def test_aware_utc_and_naive_local() -> None:
    at = aware_utc(datetime(2025, 3, 9, 13, 30))
    assert (at, at.tzinfo) == (datetime(2025, 3, 9, 13, 30, tzinfo=UTC), UTC)
    assert aware_utc(datetime(2025, 3, 9, 20, 30, tzinfo=BANGKOK)).hour == 13
    assert naive_local(datetime(2025, 3, 9, 20, 0, tzinfo=UTC), BANGKOK) == datetime(2025, 3, 10, 3)
    assert naive_local(datetime(2025, 3, 9, 20, 0), BANGKOK) == datetime(2025, 3, 10, 3)
