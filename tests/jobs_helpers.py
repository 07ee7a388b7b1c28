"""Jobs in tests: alert levels, serials, table checksums (contexts: bgworkers.demo.harness)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def alert_level(job: str, counters: Mapping[str, int]) -> str:
    """The level the runner logs a tenant result at, with the default thresholds."""
    from bgworkers.engine import alerts
    from bgworkers.jobs import BY_NAME
    from bgworkers.settings import AlertsSettings

    return alerts.level(alerts.check(BY_NAME[job].rules, counters, AlertsSettings()))


def std(seq: int, ptype: str = "hatthasilpa", code: str = "BLVR") -> str:
    """A valid standard serial, distinct per sequence number."""
    from datetime import date

    from bgworkers.jobs.serials.format import format_serial

    return format_serial(code, ptype, "BAG01", date(2025, 11, 10), seq, f"H{seq:03d}")


def bad_check(serial: str) -> str:
    """The same serial with a wrong check character."""
    return serial[:-1] + ("0" if serial[-1] != "0" else "1")


def table_digest(engines: dict[str, Any]) -> dict[str, str]:
    """A checksum of every table of each labelled database (row order ignored)."""
    import hashlib

    import sqlalchemy as sa

    out = {}
    for label, engine in engines.items():
        with engine.connect() as conn:
            for name in sorted(sa.inspect(conn).get_table_names()):
                rows = conn.execute(sa.text(f"SELECT * FROM {name}")).all()
                text = "\n".join(sorted(repr(tuple(r)) for r in rows))
                out[f"{label}.{name}"] = hashlib.sha256(text.encode()).hexdigest()
    return out
