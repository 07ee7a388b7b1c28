"""Serial numbers: format, checksum, parsing and classification.  Pure functions, no I/O.

Standard format: TENANT-TYPE-SKU-YYYYMMDD-SEQ-HASH4-C, where C is the sum of the
character codes of everything before the final '-C', modulo 36, in 0-9A-Z.
Every function here accepts any string (NUL, non-ASCII, very long) and never raises.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STANDARD_RE = re.compile(
    r"^([A-Z0-9]{2,8})-([A-Z]{2,4})-([A-Z0-9]{2,8})-(\d{8})-(\d{5})-([A-Z0-9]{4})-([A-Z0-9])$",
    re.ASCII,  # \d is 0-9 only, not every Unicode digit
)
TYPE_CODES = {"hatthasilpa": "HAT", "oem": "OEM", "classic": "ATL"}


def type_code(production_type: str) -> str:
    """HAT, OEM, ATL, or the first three letters upper-cased."""
    return TYPE_CODES.get(production_type, production_type[:3].upper())


def checksum(body: str) -> str:
    """The check character of `body` (the serial without its final '-C')."""
    try:
        total = sum(body.encode("ascii"))  # fast path: a serial is ASCII
    except UnicodeEncodeError:
        total = sum(map(ord, body))
    return ALPHABET[total % 36]


def to_base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def format_serial(
    tenant: str, production_type: str, sku: str, day: date, seq: int, hash4: str
) -> str:
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


# ---------------------------------------------------------------- classification


class Kind(StrEnum):
    """What a serial value is, as the consistency check sees it."""

    STANDARD = "standard"  # standard format, checksum right
    CHECKSUM_FAIL = "checksum_fail"  # standard format, checksum wrong
    EXEMPT = "exempt"  # matches an exempt pattern (TEMP, legacy, MO, LOT, ...)
    COMPONENT = "component"  # <valid standard serial>-<PART>[-n]
    INVALID_FORMAT = "invalid_format"  # none of the above

    @property
    def is_legacy(self) -> bool:
        """Non-standard but legitimate: counted as legacy, never quarantined."""
        return self in (Kind.EXEMPT, Kind.COMPONENT)


#: PART of a component serial and its optional number: `-STRAP`, `-BODY-2`.
COMPONENT_PART_RE = re.compile(r"[A-Z][A-Z0-9_]{0,19}", re.ASCII)
COMPONENT_NUMBER_RE = re.compile(r"[0-9]{1,3}", re.ASCII)
_STANDARD_PARTS = 7
_LONGEST_COMPONENT = 44 + 1 + 20 + 1 + 3


def compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Exempt patterns as compiled regexes (the settings already validated them)."""
    return tuple(re.compile(p) for p in patterns)


def component_parent(serial: str) -> StandardSerial | None:
    """The parsed parent of `<standard-shaped serial>-<PART>[-n]`, else None.

    The parent is returned whether or not its checksum is right; a component is
    valid only when its parent is (see `classify`).
    """
    if len(serial) > _LONGEST_COMPONENT:
        return None
    parts = serial.split("-")
    extra = parts[_STANDARD_PARTS:]
    if len(extra) not in (1, 2) or not COMPONENT_PART_RE.fullmatch(extra[0]):
        return None
    if len(extra) == 2 and not COMPONENT_NUMBER_RE.fullmatch(extra[1]):
        return None
    return parse_standard("-".join(parts[:_STANDARD_PARTS]))


def classify(serial: str, exempt: Sequence[re.Pattern[str]]) -> Kind:
    """The kind of a serial value.

    Order: a value in standard form is judged as standard (checksum right or
    wrong); the exempt patterns apply to the other values; then a component of
    a valid standard serial; anything else is an invalid format.
    """
    parsed = parse_standard(serial)
    if parsed is not None:
        return Kind.STANDARD if parsed.checksum_ok else Kind.CHECKSUM_FAIL
    if any(pattern.search(serial) for pattern in exempt):
        return Kind.EXEMPT
    parent = component_parent(serial)
    if parent is not None and parent.checksum_ok:
        return Kind.COMPONENT
    return Kind.INVALID_FORMAT


# ---------------------------------------------------------------- unusable keys

#: What a key (a serial) never holds: C0 control characters, DEL, and lone
#: surrogates, which is how bytes that are not UTF-8 arrive when text is read
#: with the `surrogateescape` error handler (SQLite connections, see bgworkers.db).
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
SHOWN_CHARS = 80


def key_problem(value: str | None) -> str | None:
    """Why `value` cannot be used as a key (a serial number), or None when it can.

    Empty, padded, very long or SQL-looking values are data like any other and
    pass; NULL, control characters and undecodable bytes do not.
    """
    if value is None:
        return "is NULL"
    if value.isprintable():  # the fast path: no control character, no surrogate
        return None
    match = _UNSAFE_RE.search(value)
    if match is None:
        return None  # other non-printables (NBSP, line separators ...) are just odd data
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return "holds bytes that are not valid UTF-8"
    return f"holds the control character U+{ord(char):04X}"


def shown(value: str | None, limit: int = SHOWN_CHARS) -> str | None:
    """`value` safe to log: control characters and undecodable bytes escaped, cut at `limit`."""
    if value is None:
        return None
    cut = value[:limit]
    if not cut.isprintable():
        cut = _UNSAFE_RE.sub(lambda m: ascii(m.group())[1:-1], cut)
    return cut if len(value) <= limit else f"{cut}... ({len(value)} chars)"


# ---------------------------------------------------------------- hash signature


def hash_signature(serial: str, salt: str) -> str:
    """Hex HMAC-SHA256 of the full serial keyed with the ASCII of the 64-hex salt."""
    key = salt.encode("utf-8", "surrogatepass")
    return hmac.digest(key, serial.encode("utf-8", "surrogatepass"), "sha256").hex()


def hash_ok(serial: str, signature: str | None, salt: str) -> bool:
    """Whether `signature` (hex, any case, surrounding blanks ignored) signs `serial`."""
    if signature is None:
        return False
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(hash_signature(serial, salt).encode("ascii"), given)
