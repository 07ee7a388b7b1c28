"""Crontab expressions with crontab's meaning, as APScheduler 3 CronTriggers.

APScheduler 3 numbers weekdays from Monday = 0; crontab from Sunday = 0 (and 7).
A settings.toml line copied from a crontab must fire on the same days, so the
day-of-week field is expanded here and handed over as day names.
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _day_number(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token[:3] in _DAYS and len(token) == 3:
        return _DAYS.index(token[:3])
    raise ValueError(f"bad day of week {token!r} (use 0-7 or sun..sat)")


def crontab_weekdays(field: str) -> str:
    """Crontab day-of-week field -> APScheduler day names ('1-5' -> 'mon,tue,wed,thu,fri')."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in day of week {part!r}")
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            low, high = (_day_number(t) for t in span.split("-", 1))
            if low > high:
                raise ValueError(f"bad range in day of week {part!r}")
        else:
            low = _day_number(span)
            high = 6 if step else low
        days.update(d % 7 for d in range(low, high + 1, step or 1))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str, timezone: str | tzinfo, jitter: int | None = None) -> CronTrigger:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=timezone,
        jitter=jitter,
    )
