"""Job serial_consistency on SQLite and MariaDB: one planted example of every outcome.

Tenant DEFAULT (id 1) holds the scenario below; maison_atelier (id 2) a clean
serial and one invalid one.  Pages are 3 rows so that every pass spans pages
and the two tokens of the duplicate sit on different pages.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import DbUrls, build_world, write_settings
from jobs_helpers import alert_level, bad_check, std, table_digest

from bgworkers.demo.harness import make_context
from bgworkers.engine.job import JobContext, LeaseLost
from bgworkers.engine.logs import configure_logging
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs.serials import consistency as serial_consistency
from bgworkers.jobs.serials.format import checksum, hash_signature
from bgworkers.schema import core, tenant
from bgworkers.settings import LoggingSettings, Settings, load_settings

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
UTC_NOW = NOW.replace(tzinfo=None)
ERP_NOW = UTC_NOW + timedelta(hours=7)  # Asia/Bangkok
SALT_HAT = "0123456789abcdef" * 4
SALT_OEM = "fedcba9876543210" * 4
SALTS_ENV = "BGWORKERS_JOBS__SERIAL_CONSISTENCY__SALTS"
JOB = "serial_consistency"


S = {
    name: std(seq)
    for seq, name in enumerate(
        (
            "link",
            "ok",
            "core",
            "pend",
            "mis",
            "unreg",
            "other",
            "hash",
            "unv",
            "dup",
            "orph_c",
            "orph_x",
            "orph_old",
            "fresh",
            "done",
            "case",
        ),
        start=1,
    )
}
S["oem"] = std(90, "oem")
BAD_PARENT = bad_check(std(91))
assert BAD_PARENT[-1] != checksum(BAD_PARENT[:-2])

# id_token -> (token_type, status, serial)
TOKENS: dict[int, tuple[str, str, str | None]] = {
    10: ("piece", "active", S["link"]),  # its job_ticket_serial row is not linked
    11: ("piece", "active", S["ok"]),  # all fine
    12: ("piece", "waiting", S["core"]),  # registry not linked -> enqueued
    13: ("piece", "paused", S["pend"]),  # registry not linked, already pending in the outbox
    14: ("piece", "ready", S["oem"]),  # OEM serial, registry not linked: not a core link
    15: ("piece", "active", S["mis"]),  # registry linked to token 999 (already quarantined)
    16: ("piece", "active", S["unreg"]),  # no registry row (an old quarantine was resolved)
    17: ("piece", "active", S["other"]),  # registry row of tenant 2
    18: ("piece", "active", "hello world"),  # invalid format
    19: ("piece", "active", bad_check(std(19))),  # checksum
    20: ("piece", "active", S["hash"]),  # wrong hash signature
    21: ("piece", "active", S["unv"]),  # salt version 9 not configured: not checkable
    22: ("piece", "waiting", S["dup"]),  # duplicate (with 40), unlinked job-ticket serial
    24: ("piece", "ready", "TEMP-20251119-0001"),
    25: ("piece", "active", "BLV-2019-00A1Z9"),
    26: ("piece", "active", "MO-2511-00042-01"),
    27: ("batch", "active", "LOT-20251110-BAG01-001"),
    28: ("component", "active", f"{S['ok']}-STRAP"),  # component of a valid parent
    29: ("component", "active", f"{BAD_PARENT}-FLAP-2"),  # of an invalid parent
    30: ("piece", "completed", S["done"]),  # not live: never checked
    31: ("piece", "active", None),  # no serial
    32: ("piece", "scrapped", "garbage"),
    33: ("piece", "active", S["case"].lower()),  # not the serial of job-ticket serial 11
    34: ("piece", "active", S["case"]),  # is: 11 links to 34, not to 33
    40: ("piece", "paused", S["dup"]),
}
# id_serial -> (id_job_ticket, serial, generated_at, spawned_token_id)
OLD, RECENT = UTC_NOW - timedelta(days=10), UTC_NOW - timedelta(days=1)
JTS: dict[int, tuple[int, str, datetime, int | None]] = {
    1: (1, S["link"], RECENT, None),  # missing tenant link -> 10
    2: (1, S["ok"], RECENT, 11),
    3: (1, S["core"], RECENT, 12),
    5: (1, S["dup"], RECENT, None),  # missing tenant link -> 22 (the lowest)
    6: (2, S["orph_c"], RECENT, None),  # ticket completed -> orphaned
    7: (3, S["orph_x"], RECENT, None),  # ticket cancelled -> orphaned
    8: (1, S["orph_old"], OLD, None),  # older than 7 days -> orphaned
    9: (1, S["fresh"], RECENT, None),  # young, ticket running: nothing
    10: (1, S["done"], OLD, None),  # carried by a completed token: nothing
    11: (1, S["case"], RECENT, None),  # missing tenant link -> 34 (exact match only)
}
# serial -> (tenant_id, production_type, dag_token_id, salt version, signed correctly)
REGISTRY: dict[str, tuple[int, str, int | None, int, bool]] = {
    S["link"]: (1, "hatthasilpa", 10, 1, True),
    S["ok"]: (1, "hatthasilpa", 11, 1, True),
    S["core"]: (1, "hatthasilpa", None, 1, True),
    S["pend"]: (1, "hatthasilpa", None, 1, True),
    S["oem"]: (1, "oem", None, 1, True),
    S["mis"]: (1, "hatthasilpa", 999, 1, True),
    S["other"]: (2, "hatthasilpa", None, 1, True),
    S["hash"]: (1, "hatthasilpa", 20, 1, False),
    S["unv"]: (1, "hatthasilpa", 21, 9, True),
    S["dup"]: (1, "hatthasilpa", None, 1, True),
    S["case"]: (1, "hatthasilpa", 34, 1, True),
    "MAIS-HAT-TESTP822-20251114-00123-1YLJ-2": (2, "hatthasilpa", 10, 1, True),
}

EXPECTED = {
    "missing_tenant_links": 3,
    "missing_core_links": 2,
    "invalid_formats": 5,
    "orphaned": 3,
    "duplicates": 2,
    "mismatches": 1,
    "unregistered": 2,
    "legacy": 5,
    "fixed": 4,
    "quarantined": 12,
    "bad_rows": 0,
    "errors": 0,
}
EXPECTED_QUARANTINE = {
    (S["mis"], "registry_mismatch", "flow_token", 15),  # was already open
    (S["unreg"], "unregistered", "flow_token", 16),
    (S["other"], "unregistered", "flow_token", 17),
    ("hello world", "invalid_format", "flow_token", 18),
    (bad_check(std(19)), "checksum_fail", "flow_token", 19),
    (S["hash"], "hash_fail", "flow_token", 20),
    (S["dup"], "duplicate", "flow_token", 22),
    (S["dup"], "duplicate", "flow_token", 40),
    (f"{BAD_PARENT}-FLAP-2", "invalid_format", "flow_token", 29),
    (S["case"].lower(), "invalid_format", "flow_token", 33),
    (S["orph_c"], "orphaned", "job_ticket_serial", 6),
    (S["orph_x"], "orphaned", "job_ticket_serial", 7),
    (S["orph_old"], "orphaned", "job_ticket_serial", 8),
}


@dataclasses.dataclass
class Scenario:
    settings: Settings
    dbs: Databases

    def context(self, code: str = "DEFAULT", dry_run: bool = False) -> JobContext:
        return make_context(self.settings, self.dbs, code, NOW, JOB, dry_run=dry_run)

    def run(self, code: str = "DEFAULT", dry_run: bool = False) -> dict[str, int]:
        return serial_consistency.run(self.context(code, dry_run))

    def digest(self) -> dict[str, str]:
        """A checksum of every table of every database (row order ignored)."""
        return table_digest(
            {
                "core": self.dbs.core,
                "DEFAULT": self.dbs.tenant("DEFAULT"),
                "maison": self.dbs.tenant("maison_atelier"),
            }
        )

    def rows(self, table: sa.Table, code: str = "DEFAULT") -> list[Any]:
        with self.dbs.tenant(code).connect() as conn:
            return list(conn.execute(sa.select(table)).all())


@pytest.fixture
def scenario(
    db_urls: DbUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scenario]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(SALTS_ENV, json.dumps({"hatthasilpa:1": SALT_HAT, "oem:1": SALT_OEM}))
    path = write_settings(
        tmp_path / "settings.toml", db_urls, "[jobs.serial_consistency]\nchunk_size = 3\n"
    )
    world = build_world(
        path,
        [
            {
                "id_org": 1,
                "code": "DEFAULT",
                "name": "Bellavier Atelier",
                "status": "active",
                "org_serial_code": "BLVR",
            },
            {
                "id_org": 2,
                "code": "maison_atelier",
                "name": "Maison Atelier",
                "status": "1",
                "org_serial_code": "MAIS",
            },
        ],
        erp_schema=True,
    )
    try:
        _populate(world.dbs)
        yield Scenario(world.settings, world.dbs)
    finally:
        world.dbs.dispose()


def _populate(dbs: Databases) -> None:
    with dbs.core.begin() as conn:
        salts = {"hatthasilpa": SALT_HAT, "oem": SALT_OEM}
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": serial,
                    "tenant_id": tid,
                    "org_code": "BLVR" if tid == 1 else "MAIS",
                    "production_type": ptype,
                    "sku": "BAG01",
                    "job_ticket_id": 1,
                    "dag_token_id": dag,
                    "hash_signature": hash_signature(
                        serial if good else serial + "x", salts[ptype]
                    ),
                    "hash_salt_version": version,
                    "checksum": serial[-1],
                    "created_at": OLD,
                }
                for serial, (tid, ptype, dag, version, good) in REGISTRY.items()
            ],
        )
    with dbs.tenant("DEFAULT").begin() as conn:
        conn.execute(
            sa.insert(tenant.job_ticket),
            [
                {
                    "id_job_ticket": i,
                    "ticket_code": f"JT-{i}",
                    "status": status,
                    "production_type": "hatthasilpa",
                }
                for i, status in ((1, "in_progress"), (2, "completed"), (3, "cancelled"))
            ],
        )
        conn.execute(
            sa.insert(tenant.flow_token),
            [
                {
                    "id_token": tid,
                    "id_instance": 1,
                    "token_type": ttype,
                    "status": status,
                    "serial_number": serial,
                    "spawned_at": ERP_NOW - timedelta(hours=tid),
                }
                for tid, (ttype, status, serial) in TOKENS.items()
            ],
        )
        conn.execute(
            sa.insert(tenant.job_ticket_serial),
            [
                {
                    "id_serial": sid,
                    "id_job_ticket": ticket,
                    "serial_number": serial,
                    "sequence_no": sid,
                    "generated_at": at,
                    "spawned_token_id": token,
                    "spawned_at": None if token is None else at,
                }
                for sid, (ticket, serial, at, token) in JTS.items()
            ],
        )
        outbox = [(S["pend"], 13, "pending"), (S["core"], 12, "dead"), (S["core"], 11, "pending")]
        conn.execute(
            sa.insert(tenant.serial_link_outbox),
            [
                {
                    "serial_code": serial,
                    "dag_token_id": token,
                    "status": status,
                    "retry_count": 0,
                    "created_at": OLD,
                    "updated_at": OLD,
                }
                for serial, token, status in outbox
            ],
        )
        conn.execute(
            sa.insert(tenant.serial_quarantine),
            [
                {
                    "serial_code": S["mis"],
                    "source_table": "flow_token",
                    "source_id": 15,
                    "reason": "registry_mismatch",
                    "detected_at": OLD,
                    "resolved_at": None,
                },
                {
                    "serial_code": S["unreg"],
                    "source_table": "flow_token",
                    "source_id": 16,
                    "reason": "unregistered",
                    "detected_at": OLD,
                    "resolved_at": RECENT,
                },
            ],
        )
    with dbs.tenant("maison_atelier").begin() as conn:
        conn.execute(
            sa.insert(tenant.flow_token),
            [
                {
                    "id_token": 10,
                    "id_instance": 1,
                    "token_type": "piece",
                    "status": "active",
                    "serial_number": "MAIS-HAT-TESTP822-20251114-00123-1YLJ-2",
                    "spawned_at": ERP_NOW,
                },
                {
                    "id_token": 11,
                    "id_instance": 1,
                    "token_type": "piece",
                    "status": "active",
                    "serial_number": "MA01-HAT-BAG-20251109-00027-A9K2-X",
                    "spawned_at": ERP_NOW,
                },
            ],
        )


def open_quarantine(scenario: Scenario) -> set[tuple[str, str, str, int]]:
    return {
        (r.serial_code, r.reason, r.source_table, r.source_id)
        for r in scenario.rows(tenant.serial_quarantine)
        if r.resolved_at is None
    }


def test_every_outcome_then_nothing_more_then_dry_run(scenario: Scenario) -> None:
    pristine = scenario.digest()
    assert scenario.run(dry_run=True) == EXPECTED  # what it would do ...
    assert scenario.digest() == pristine  # ... without writing anything

    first = scenario.run()
    assert first == EXPECTED
    assert alert_level("serial_consistency", first) == "warning"  # 12 quarantined > 10
    assert open_quarantine(scenario) == EXPECTED_QUARANTINE
    quarantine = {
        (r.serial_code, r.reason, r.source_id): r for r in scenario.rows(tenant.serial_quarantine)
    }
    assert quarantine[(S["dup"], "duplicate", 40)].detected_at == UTC_NOW
    assert quarantine[(S["mis"], "registry_mismatch", 15)].detected_at == OLD

    links = {r.id_serial: r for r in scenario.rows(tenant.job_ticket_serial)}
    # the token's spawned_at is ERP local time (UTC+7); job_ticket_serial holds UTC
    assert (links[1].spawned_token_id, links[1].spawned_at) == (10, UTC_NOW - timedelta(hours=10))
    assert (links[5].spawned_token_id, links[5].spawned_at) == (22, UTC_NOW - timedelta(hours=22))
    assert links[11].spawned_token_id == 34
    assert all(links[i].spawned_token_id is None for i in (6, 7, 8, 9, 10))

    outbox = sorted(
        (r.serial_code, r.dag_token_id, r.status) for r in scenario.rows(tenant.serial_link_outbox)
    )
    assert outbox == sorted(
        [
            (S["pend"], 13, "pending"),
            (S["core"], 12, "dead"),
            (S["core"], 11, "pending"),
            (S["core"], 12, "pending"),
        ]
    )
    new = next(
        r
        for r in scenario.rows(tenant.serial_link_outbox)
        if (r.dag_token_id, r.status) == (12, "pending")
    )
    assert (new.retry_count, new.created_at, new.next_attempt_at) == (0, UTC_NOW, None)

    after_first = scenario.digest()
    changed = {k for k in pristine if pristine[k] != after_first[k]}
    assert changed == {
        "DEFAULT.job_ticket_serial",
        "DEFAULT.serial_link_outbox",
        "DEFAULT.serial_quarantine",
    }  # tokens and core untouched

    second = scenario.run()
    assert second == {**EXPECTED, "missing_tenant_links": 0, "fixed": 0, "quarantined": 0}
    assert alert_level("serial_consistency", second) == "info"
    assert scenario.digest() == after_first

    assert scenario.run(dry_run=True) == second
    assert scenario.digest() == after_first

    maison = scenario.run("maison_atelier")
    assert {k: v for k, v in maison.items() if v} == {"invalid_formats": 1, "quarantined": 1}


def test_dry_run_setting_and_no_salts(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without salts the hash is not checked; `dry_run = true` in settings writes nothing."""
    monkeypatch.delenv(SALTS_ENV)
    url = scenario.dbs.settings.database
    path = tmp_path / "dry.toml"
    path.write_text(
        f"[database]\ncore_url = '{url.core_url}'\ntenant_url = '{url.tenant_url}'\n"
        "[jobs.serial_consistency]\ndry_run = true\nchunk_size = 1000\n"
    )
    settings = load_settings(path)
    assert not settings.jobs.serial_consistency.salts
    dbs = Databases(settings)
    before = scenario.digest()
    try:
        counters = serial_consistency.run(make_context(settings, dbs, "DEFAULT", NOW, JOB))
    finally:
        dbs.dispose()
    assert counters == {**EXPECTED, "invalid_formats": 4, "quarantined": 11}
    assert scenario.digest() == before


def test_lost_lease_stops_before_writing(scenario: Scenario) -> None:
    class Lost:
        def check(self) -> None:
            raise LeaseLost("taken over")

    before = scenario.digest()
    with pytest.raises(LeaseLost):
        serial_consistency.run(dataclasses.replace(scenario.context(), guard=Lost()))
    assert scenario.digest() == before
    assert scenario.run() == EXPECTED  # a later run finishes the work


def test_core_failure_is_an_error_and_tenant_checks_go_on(scenario: Scenario) -> None:
    buf = io.StringIO()
    configure_logging(LoggingSettings(format="json"), scenario.settings.secret_values(), buf)
    with scenario.dbs.core.begin() as conn:
        conn.execute(sa.text("DROP TABLE serial_registry"))
    counters = scenario.run()
    assert counters == {
        **EXPECTED,
        "missing_core_links": 0,
        "mismatches": 0,
        "unregistered": 0,
        "invalid_formats": 4,
        "fixed": 3,
        "quarantined": 9,
        "errors": 1,
    }
    assert alert_level("serial_consistency", counters) == "warning"
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"] for e in events if e["level"] == "warning"] == [
        "serial_registry_unavailable"
    ]


def test_logs_never_show_salts(scenario: Scenario) -> None:
    buf = io.StringIO()
    configure_logging(LoggingSettings(format="json"), scenario.settings.secret_values(), buf)
    scenario.run()
    text = buf.getvalue()
    assert SALT_HAT not in text and SALT_OEM not in text
    events = {e["event"]: e for e in map(json.loads, text.splitlines())}
    assert events["serial_hash_unverifiable"]["missing_salts"] == ["hatthasilpa:9"]
    assert events["serial_consistency_changes"]["quarantined_by_reason"]["orphaned"] == 3


def test_broken_tenant_fails_alone(scenario: Scenario) -> None:
    with scenario.dbs.tenant("maison_atelier").begin() as conn:
        conn.execute(sa.text("DROP TABLE flow_token"))
    with pytest.raises(sa.exc.DBAPIError):
        scenario.run("maison_atelier")
    assert scenario.run() == EXPECTED


def test_level() -> None:
    def level(counters: dict[str, int]) -> str:
        return alert_level("serial_consistency", counters)

    assert level({"quarantined": 10, "errors": 0}) == "info"
    assert level({"quarantined": 11, "errors": 0}) == "warning"
    assert level({"quarantined": 0, "errors": 1}) == "warning"
