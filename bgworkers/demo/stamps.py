"""Timestamps as the databases store them, fast: the generator counts UTC epoch seconds.

Tenant tables hold naive ERP local time, the core serial registry holds UTC.
Rows are written through the DBAPI, so the text must be what SQLAlchemy
itself would write: SQLite stores DATETIME as 'YYYY-MM-DD HH:MM:SS.ffffff'.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from bgworkers.engine.clock import SystemClock, naive_utc

MINUTE, HOUR, DAY = 60, 3600, 86400
_EPOCH = date(1970, 1, 1)


def epoch(moment: datetime) -> int:
    """Seconds since the epoch of a naive-UTC (or aware) datetime."""
    return calendar.timegm(naive_utc(moment).timetuple())


def anchor(at: datetime | None) -> datetime:
    """`at` as naive UTC; default: now, truncated to the minute."""
    if at is None:
        return naive_utc(SystemClock().now()).replace(second=0, microsecond=0)
    return naive_utc(at)


class Stamps:
    """UTC epoch seconds -> datetime text for one database backend."""

    def __init__(self, tz: ZoneInfo, sqlite: bool) -> None:
        self._tz = tz
        suffix = ".000000" if sqlite else ""
        #: " HH:MM:SS[.ffffff]" for every second of a day (about 5 MB, built once).
        self._clock = tuple(
            f" {h:02d}:{m:02d}:{s:02d}{suffix}"
            for h in range(24)
            for m in range(60)
            for s in range(60)
        )
        self._days: dict[int, str] = {}
        self._offsets: dict[int, int] = {}

    def utc(self, t: int) -> str:
        d, s = divmod(t, DAY)
        day = self._days.get(d)
        if day is None:
            day = self._days[d] = (_EPOCH + timedelta(days=d)).isoformat()
        return day + self._clock[s]

    def local(self, t: int) -> str:
        """Naive ERP local time of the UTC instant `t`."""
        off = self._offsets.get(t // HOUR)
        d, s = divmod(t + (self.offset(t) if off is None else off), DAY)
        day = self._days.get(d)
        if day is None:
            day = self._days[d] = (_EPOCH + timedelta(days=d)).isoformat()
        return day + self._clock[s]

    def opt_local(self, t: int | None) -> str | None:
        return None if t is None else self.utc(t + self.offset(t))

    def offset(self, t: int) -> int:
        hour = t // HOUR
        off = self._offsets.get(hour)
        if off is None:
            delta = datetime.fromtimestamp(hour * HOUR, UTC).astimezone(self._tz).utcoffset()
            off = self._offsets[hour] = int(delta.total_seconds()) if delta else 0
        return off

    def local_day(self, t: int) -> date:
        return _EPOCH + timedelta(days=(t + self.offset(t)) // DAY)

    @staticmethod
    def utc_yyyymmdd(t: int) -> str:
        return (_EPOCH + timedelta(days=t // DAY)).strftime("%Y%m%d")
