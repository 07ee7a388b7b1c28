"""Which values the serial jobs treat as poison (skipped and named) and which as data."""

from __future__ import annotations

from datetime import datetime

import pytest

from bgworkers.jobs.outbox.store import Item, row_problem
from bgworkers.jobs.serials.consistency import parse_naive
from bgworkers.jobs.serials.format import key_problem, shown

UNDECODABLE = b"BLVR\xff".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "  BLVR  X  ",
        "L" * 500,
        "\U0001f600",
        "'; DROP TABLE x; --",
        "a\u00a0b",
        "BLVR-HAT-BAG01-20251110-00001-H001-K",
    ],
)
def test_hostile_but_legal_values_are_keys(value: str) -> None:
    assert key_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "is NULL"),
        ("A\x00B", "U+0000"),
        ("A\tB", "U+0009"),
        ("A\x1fB", "U+001F"),
        ("A\x7f", "U+007F"),
        (UNDECODABLE, "not valid UTF-8"),
    ],
)
def test_poison_values_are_named(value: str | None, problem: str) -> None:
    found = key_problem(value)
    assert found is not None and problem in found


def test_shown_values_are_safe_to_log() -> None:
    assert shown("A\x00B") == "A\\x00B"
    assert shown(UNDECODABLE) == "BLVR\\udcff"
    assert shown(UNDECODABLE).encode("utf-8")  # no lone surrogate left
    assert shown("x" * 100, limit=5) == "xxxxx... (100 chars)"
    assert shown(None) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2025-11-20 12:00:00", datetime(2025, 11, 20, 12)),
        ("2025-11-20 12:00:00.000000", datetime(2025, 11, 20, 12)),
        ("1970-01-01 00:00:00", datetime(1970, 1, 1)),
        (None, None),
        ("0000-00-00 00:00:00", None),
        ("0001-01-01 00:00:00", None),
        ("not a date", None),
        ("", None),
        ("2025-11-20T12:00:00+07:00", None),
        ("9999-12-31 23:59:59", None),
    ],
)
def test_dates_read_as_text(text: str | None, value: datetime | None) -> None:
    assert parse_naive(text) == value


@pytest.mark.parametrize(
    ("serial", "token", "problem"),
    [
        ("S", None, "dag_token_id is NULL"),
        ("S", 0, "not a token id (0)"),
        ("S", -1, "not a token id (-1)"),
        (None, 5, "serial_code is NULL"),
        ("S\x00T", 5, "U+0000"),
        ("S", 5, None),
        ("", 5, None),
        ("S ", 5, None),
    ],
)
def test_outbox_rows_that_can_never_succeed(
    serial: str | None, token: int | None, problem: str | None
) -> None:
    found = row_problem(Item(1, serial, token, 0))
    assert found == problem if problem is None else found is not None and problem in found
