"""Settings value types and their validation: durations, URLs, codes, cron, zones."""

from __future__ import annotations

import re
import string
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from bgworkers.settings.cron import cron_trigger

#: A tenant code becomes part of database and lock names: nothing else is allowed in it.
TENANT_CODE_PATTERN = "^[A-Za-z0-9_]{1,50}$"
TENANT_CODE_RE = re.compile(TENANT_CODE_PATTERN)

DASHBOARD_TABLES = (
    "mv_token_flow_summary",
    "mv_node_bottlenecks",
    "mv_team_workload",
    "mv_cycle_time_analytics",
    "mv_dashboard_trends",
)


# ---------------------------------------------------------------- value types

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'90s', '5m', '1h30m', '7d' (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return timedelta(seconds=value)
    text = str(value).strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m, 7d")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0, got {format_duration(value)}")
    return value


_as_text = PlainSerializer(format_duration, return_type=str, when_used="json")
Duration = Annotated[timedelta, BeforeValidator(parse_duration), _as_text]
PositiveDuration = Annotated[
    timedelta, BeforeValidator(parse_duration), AfterValidator(_positive), _as_text
]


def tenant_code_problem(code: str) -> str | None:
    """Why `code` cannot be a tenant code (settings, organizations, the command line), or
    None when it can."""
    if TENANT_CODE_RE.fullmatch(code):
        return None
    return (
        f"tenant code {code!r} refused: must match {TENANT_CODE_PATTERN}, as it becomes "
        "part of database and lock names"
    )


def check_tenant_code(code: str) -> str:
    problem = tenant_code_problem(code)
    if problem is not None:
        raise ValueError(problem)
    return code


TenantCode = Annotated[str, AfterValidator(check_tenant_code)]


def check_db_url(value: str) -> str:
    """A SQLAlchemy URL whose dialect and driver exist; the message hides passwords."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "not a database URL (expected e.g. mysql+mysqldb://user@host/db or sqlite:///path.db)"
        ) from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"unknown database driver {url.drivername!r}") from None
    return value


DbUrl = Annotated[str, AfterValidator(check_db_url)]


def check_tenant_url(value: str) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    unknown = fields - {"code", "code_lower"}
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}} (use {{code}} or {{code_lower}})"
        )
    if not fields:
        raise ValueError("must contain {code} or {code_lower}: each tenant has its own database")
    check_db_url(value.format(code="DEFAULT", code_lower="default"))
    return value


def check_cron(value: str) -> str:
    try:
        cron_trigger(value, "UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    return value


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like Asia/Bangkok)"
        ) from None
    return value


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]


def check_listen(value: str) -> str:
    """HOST:PORT for a listening socket."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:9464, got {value!r}")
    return value


# ---------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
