"""Serial format and checksum with the SPEC's test vectors."""

from __future__ import annotations

from datetime import date

import pytest

from bgworkers.jobs.serials.format import (
    checksum,
    format_serial,
    parse_standard,
    to_base36,
    type_code,
)


@pytest.mark.parametrize(
    "serial",
    [
        "MAIS-HAT-TESTP822-20251114-00123-1YLJ-2",
        "MAIS-HAT-TESTP822-20260111-00009-2QLM-Y",
    ],
)
def test_spec_vectors_are_valid(serial: str) -> None:
    parsed = parse_standard(serial)
    assert parsed is not None and parsed.checksum_ok


def test_erp_doc_example_has_a_wrong_checksum() -> None:
    serial = "MA01-HAT-BAG-20251109-00027-A9K2-X"
    parsed = parse_standard(serial)
    assert parsed is not None and not parsed.checksum_ok
    assert checksum(serial[:-2]) == "N"


@pytest.mark.parametrize(
    "serial",
    [
        "MAIS-HAT-TESTP822-20251131-00123-1YLJ-2",  # 31 November
        "mais-HAT-TESTP822-20251114-00123-1YLJ-2",
        "MAIS-HAT-TESTP822-20251114-0123-1YLJ-2",
        "TEMP-20251114-0001",
        "",
    ],
)
def test_non_standard(serial: str) -> None:
    assert parse_standard(serial) is None


def test_format_round_trips() -> None:
    serial = format_serial("MAIS", "hatthasilpa", "TESTP822", date(2025, 11, 14), 123, "1YLJ")
    assert serial == "MAIS-HAT-TESTP822-20251114-00123-1YLJ-2"
    assert type_code("oem") == "OEM" and type_code("classic") == "ATL"
    assert type_code("hybrid") == "HYB"


def test_base36() -> None:
    assert to_base36(0, 4) == "0000"
    assert to_base36(36**4 - 1, 4) == "ZZZZ"
    assert to_base36(36 + 10, 2) == "1A"
