"""Serial numbers: format, checksum, parsing.  Pure functions, no I/O.

Standard format: TENANT-TYPE-SKU-YYYYMMDD-SEQ-HASH4-C, where C is the sum of the
character codes of everything before the final '-C', modulo 36, in 0-9A-Z.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STANDARD_RE = re.compile(
    r"^([A-Z0-9]{2,8})-([A-Z]{2,4})-([A-Z0-9]{2,8})-(\d{8})-(\d{5})-([A-Z0-9]{4})-([A-Z0-9])$"
)
TYPE_CODES = {"hatthasilpa": "HAT", "oem": "OEM", "classic": "ATL"}


def type_code(production_type: str) -> str:
    """HAT, OEM, ATL, or the first three letters upper-cased."""
    return TYPE_CODES.get(production_type, production_type[:3].upper())


def checksum(body: str) -> str:
    """The check character of `body` (the serial without its final '-C')."""
    return ALPHABET[sum(ord(ch) for ch in body) % 36]


def to_base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def format_serial(tenant: str, production_type: str, sku: str, day: date, seq: int,
                  hash4: str) -> str:
    body = f"{tenant}-{type_code(production_type)}-{sku}-{day:%Y%m%d}-{seq:05d}-{hash4}"
    return f"{body}-{checksum(body)}"


@dataclass(frozen=True)
class StandardSerial:
    tenant: str
    type: str
    sku: str
    day: str
    seq: str
    hash4: str
    check: str

    @property
    def checksum_ok(self) -> bool:
        body = "-".join((self.tenant, self.type, self.sku, self.day, self.seq, self.hash4))
        return checksum(body) == self.check


def parse_standard(serial: str) -> StandardSerial | None:
    """The parts of a standard serial whose date is a valid calendar date, else None."""
    match = STANDARD_RE.fullmatch(serial)
    if match is None:
        return None
    day = match.group(4)
    try:
        date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return None
    return StandardSerial(*match.groups())
