"""Serial strings of the demo: standard ones, signed, and the planted bad and legacy ones.

Standard serials follow bgworkers.jobs.serials.format.format_serial; this module computes
the same text faster (the per-ticket prefix and its checksum share are
computed once).  HASH4 is a bijection of the serial index on [0, 36^4), so the
serials of one tenant are unique, and the TENANT prefix makes them unique
across tenants.  The exempt formats (TEMP-, MO-, LOT-, PREFIX-YYYY-) have no
tenant part of their own; the demo puts the tenant's serial code in each, so
they too differ between tenants (the registry's serial_code is unique over all
tenants) and still match the exempt patterns.
"""

from __future__ import annotations

import hashlib
from typing import Any

from bgworkers.demo.catalog import DEMO_SALTS
from bgworkers.jobs.serials.format import ALPHABET, checksum, type_code

HASH_SPACE = 36**4
#: Multiplier of the HASH4 bijection: coprime to 36, so i -> (i*A + b) mod 36^4 is one-to-one.
HASH_MULTIPLIER = 1_046_527
_PAIRS = tuple(a + b for a in ALPHABET for b in ALPHABET)


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after HMAC's inner and outer padded keys (RFC 2104).

    Copying them per message gives the same digest as hmac.digest() at a
    quarter of the cost, and without releasing the GIL for every serial.
    """
    block = (key if len(key) <= 64 else hashlib.sha256(key).digest()).ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


_STATES = {ptype: _hmac_states(salt.encode("ascii")) for ptype, salt in DEMO_SALTS.items()}


class SerialMaker:
    """Standard serials of one tenant, numbered by a serial index in [0, 36^4)."""

    def __init__(self, serial_code: str, offset: int) -> None:
        self.serial_code = serial_code
        self.offset = offset % HASH_SPACE

    def hash4(self, index: int) -> str:
        if not 0 <= index < HASH_SPACE:
            raise ValueError(f"serial index {index} outside [0, 36^4): scale too large")
        v = (index * HASH_MULTIPLIER + self.offset) % HASH_SPACE
        return _PAIRS[v // 1296] + _PAIRS[v % 1296]

    def prefix(self, production_type: str, sku: str, yyyymmdd: str) -> tuple[str, int]:
        """The constant head of a ticket's serials and its share of the checksum sum."""
        head = f"{self.serial_code}-{type_code(production_type)}-{sku}-{yyyymmdd}-"
        return head, sum(head.encode())

    def serial(self, head: str, head_sum: int, index: int) -> str:
        tail = f"{index % 99999 + 1:05d}-{self.hash4(index)}"
        return f"{head}{tail}-{ALPHABET[(head_sum + sum(tail.encode())) % 36]}"


def signature(serial: str, production_type: str) -> str:
    """hash_signature of a registry row: hex HMAC-SHA256 keyed with the demo salt."""
    inner, outer = _STATES[production_type]
    i = inner.copy()
    i.update(serial.encode())
    o = outer.copy()
    o.update(i.digest())
    return str(o.hexdigest())


def forged_signature(serial: str, production_type: str) -> str:
    """A wrong signature: the serial signed with the salt of the other production type."""
    return signature(serial, "oem" if production_type == "hatthasilpa" else "hatthasilpa")


# ------------------------------------------------------------------ planted values


def bad_checksum(serial: str) -> str:
    """The same serial with a check character that does not match."""
    good = ALPHABET.index(serial[-1])
    return serial[:-1] + ALPHABET[(good + 17) % 36]


def invalid_format(serial: str, variant: int) -> str:
    """A value that is neither standard nor exempt (four ways seen in the wild)."""
    kind = variant % 4
    if kind == 0:
        return serial[:-2]  # check character missing
    if kind == 1:
        return serial.lower()  # typed by hand
    if kind == 2:  # impossible date (month 13), check character recomputed
        parts = serial.split("-")
        parts[3] = parts[3][:4] + "13" + parts[3][6:]
        body = "-".join(parts[:-1])
        return f"{body}-{checksum(body)}"
    return serial.replace("-", "_")  # wrong separator


def temp_serial(tenant: str, yyyymmdd: str, n: int) -> str:
    return f"TEMP-{tenant}-{yyyymmdd}-{n:04d}"


def legacy_serial(prefix: str, year: int, n: int) -> str:
    """Pre-ERP format PREFIX-YYYY-XXXXXX (the prefix: the tenant's serial code)."""
    v = (n * 7919 + 12345) % 36**6
    digits = "".join(ALPHABET[(v // 36**p) % 36] for p in range(5, -1, -1))
    return f"{prefix}-{year}-{digits}"


def mo_serial(tenant: str, yymm: str, order: int, n: int) -> str:
    return f"MO-{tenant}-{yymm}-{order:05d}-{n:02d}"


def lot_serial(tenant: str, yyyymmdd: str, sku: str, n: int) -> str:
    """A batch serial; registered in core, so it must differ between tenants."""
    return f"LOT-{tenant}-{yyyymmdd}-{sku}-{n:03d}"


COMPONENT_PARTS = ("STRAP", "FLAP", "BODY", "LINING", "GUSSET")


def component_serial(parent: str, n: int) -> str:
    """<parent serial>-<PART>[-n]."""
    part = COMPONENT_PARTS[n % len(COMPONENT_PARTS)]
    return f"{parent}-{part}" if n % 2 == 0 else f"{parent}-{part}-{n % 3 + 1}"
