"""`bgworkers explain SERIAL` on SQLite and MariaDB.

A small hand-built world gives one serial per conclusion kind; demo data checks
that explain and the serial_consistency job agree on every serial of a tenant.
Explain never writes: table checksums are compared before and after.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import DbUrls, bgworkers, build_world, write_settings
from jobs_helpers import bad_check, std, table_digest

from bgworkers.demo import DEMO_SALT_VERSION, DEMO_SALTS, generate
from bgworkers.demo.harness import make_context
from bgworkers.engine.clock import FixedClock
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs.serials import consistency as serial_consistency
from bgworkers.jobs.serials.consistency import OUTCOME_COUNTERS
from bgworkers.jobs.serials.explain import gather, read_only
from bgworkers.jobs.serials.explain_text import explain
from bgworkers.jobs.serials.format import hash_signature
from bgworkers.schema import core, tenant
from bgworkers.settings import Settings, load_settings

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
UTC_NOW = NOW.replace(tzinfo=None)
ERP_NOW = UTC_NOW + timedelta(hours=7)  # Asia/Bangkok
OLD, RECENT = UTC_NOW - timedelta(days=10), UTC_NOW - timedelta(days=1)
SALT_HAT = "0123456789abcdef" * 4
SALTS_ENV = "BGWORKERS_JOBS__SERIAL_CONSISTENCY__SALTS"
ROOT = Path(__file__).resolve().parents[2]


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
            "orph_old",
            "fresh",
            "done",
            "stale",
            "reg_only",
        ),
        start=1,
    )
}
S["oem"] = std(90, "oem")
CHECKSUM = bad_check(std(19))
BAD_COMPONENT = f"{bad_check(std(91))}-FLAP-2"
TEMP = "TEMP-20251119-0001"

# id_token -> (token_type, status, serial)
TOKENS: dict[int, tuple[str, str, str]] = {
    10: ("piece", "active", S["link"]),
    11: ("piece", "active", S["ok"]),
    12: ("piece", "waiting", S["core"]),
    13: ("piece", "paused", S["pend"]),
    14: ("piece", "ready", S["oem"]),
    15: ("piece", "active", S["mis"]),
    16: ("piece", "active", S["unreg"]),
    17: ("piece", "active", S["other"]),
    18: ("piece", "active", "hello world"),
    19: ("piece", "active", CHECKSUM),
    20: ("piece", "active", S["hash"]),
    21: ("piece", "active", S["unv"]),
    22: ("piece", "waiting", S["dup"]),
    24: ("piece", "ready", TEMP),
    29: ("component", "active", BAD_COMPONENT),
    30: ("piece", "completed", S["done"]),
    40: ("piece", "paused", S["dup"]),
    41: ("piece", "active", S["stale"]),
    42: ("batch", "active", S["dup"]),  # not a piece: neither a duplicate nor link-checked
}
# id_serial -> (id_job_ticket, serial, generated_at, spawned_token_id)
JTS: dict[int, tuple[int, str, datetime, int | None]] = {
    1: (1, S["link"], RECENT, None),
    2: (1, S["ok"], RECENT, 11),
    5: (1, S["dup"], RECENT, None),
    6: (2, S["orph_c"], RECENT, None),
    8: (1, S["orph_old"], OLD, None),
    9: (1, S["fresh"], RECENT, None),
    10: (1, S["done"], OLD, None),
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
    S["stale"]: (1, "hatthasilpa", 41, 1, True),
    S["reg_only"]: (3, "hatthasilpa", None, 1, True),
}
OUTBOX = [(S["pend"], 13, "pending"), (S["core"], 12, "dead"), (S["core"], 11, "pending")]
# (serial, reason, source_id, resolved_at)
QUARANTINE = [
    (S["mis"], "registry_mismatch", 15, None),
    (S["unreg"], "unregistered", 16, RECENT),
    (S["stale"], "duplicate", 41, None),
]

T, J = "flow_token", "job_ticket_serial"
#: serial -> the conclusions for DEFAULT: (table, id, outcome, part of detail, part of action)
CASES: dict[str, list[tuple[str, int, str, str, str]]] = {
    TEMP: [(T, 24, "legacy", "exempt: ^TEMP-", "never quarantined")],
    "hello world": [(T, 18, "invalid_format", "neither standard", "would quarantine")],
    CHECKSUM: [
        (
            T,
            19,
            "checksum_fail",
            f"expected check character {std(19)[-1]}, found",
            "would quarantine",
        )
    ],
    BAD_COMPONENT: [
        (T, 29, "invalid_format", f"check character should be {std(91)[-1]}", "would quarantine")
    ],
    S["hash"]: [(T, 20, "hash_fail", "does not sign it (salt hatthasilpa:1)", "would quarantine")],
    S["dup"]: [
        (
            J,
            5,
            "missing_tenant_link",
            "live piece token 22 carries it",
            "would set spawned_token_id = 22, spawned_at = "
            f"{UTC_NOW - timedelta(hours=22):%Y-%m-%d %H:%M:%S} UTC",
        ),
        (T, 22, "duplicate", "on live piece tokens 22 and 40", "would quarantine"),
        (T, 40, "duplicate", "on live piece tokens 22 and 40", "would quarantine"),
        (
            T,
            42,
            "ok",
            "hash signature right; links are checked on piece tokens only",
            "nothing to do",
        ),
    ],
    S["link"]: [
        (J, 1, "missing_tenant_link", "token 10", "spawned_token_id = 10"),
        (T, 10, "ok", "linked to this token; hash signature right", "nothing to do"),
    ],
    S["core"]: [
        (
            T,
            12,
            "missing_core_link",
            "registry row has no dag_token_id",
            f"would enqueue ({S['core']}, token 12) to the outbox",
        )
    ],
    S["pend"]: [
        (T, 13, "missing_core_link", "no dag_token_id", "already pending in the outbox (row 1)")
    ],
    S["mis"]: [
        (
            T,
            15,
            "registry_mismatch",
            "registry linked to token 999, live token is 15",
            "already quarantined (open row 1)",
        )
    ],
    S["unreg"]: [(T, 16, "unregistered", "no core registry row", "would quarantine")],
    S["other"]: [
        (T, 17, "unregistered", "belongs to tenant maison_atelier (id 2)", "would quarantine")
    ],
    S["orph_c"]: [(J, 6, "orphaned", "ticket JT-2 (completed) is finished", "would quarantine")],
    S["orph_old"]: [
        (
            J,
            8,
            "orphaned",
            f"generated {OLD:%Y-%m-%d %H:%M:%S} UTC, older than orphan_after = 1w",
            "would quarantine",
        )
    ],
    S["ok"]: [
        (J, 2, "linked", "tenant link set to token 11", "nothing to do"),
        (T, 11, "ok", "registered for this tenant and linked", "nothing to do"),
    ],
    S["oem"]: [(T, 14, "ok", "registered as oem, not linked", "nothing to do")],
    S["unv"]: [(T, 21, "ok", "linked to this token", "nothing to do")],
    S["done"]: [
        (J, 10, "unlinked", "not live pieces: 30", "nothing to do yet"),
        (T, 30, "not_live", "status completed is not live", "not checked"),
    ],
    S["fresh"]: [
        (
            J,
            9,
            "unlinked",
            f"orphaned from {RECENT + timedelta(days=7):%Y-%m-%d %H:%M:%S} UTC",
            "nothing to do yet",
        )
    ],
    S["stale"]: [(T, 41, "ok", "linked to this token", "nothing to do")],
    S["reg_only"]: [],
}


@dataclasses.dataclass
class World:
    settings: Settings
    dbs: Databases
    config: Path
    urls: DbUrls

    def explain(
        self, serial: str, code: str | None = None, as_json: bool = False
    ) -> tuple[int, list[str]]:
        lines: list[str] = []
        status = explain(
            self.settings, self.dbs, serial, code, lines.append, as_json, clock=FixedClock(NOW)
        )
        return status, lines

    def facts(self, serial: str, code: str | None = None) -> dict[str, Any]:
        status, lines = self.explain(serial, code, as_json=True)
        assert len(lines) == 1, lines
        return {"status": status, **json.loads(lines[0])}

    def digest(self) -> dict[str, str]:
        return digest(self.dbs, ("DEFAULT", "maison_atelier"))


def digest(dbs: Databases, codes: tuple[str, ...]) -> dict[str, str]:
    """A checksum of every table of core and the tenants (row order ignored)."""
    return table_digest({"core": dbs.core, **{c: dbs.tenant(c) for c in codes}})


@pytest.fixture
def world(db_urls: DbUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(SALTS_ENV, json.dumps({"hatthasilpa:1": SALT_HAT}))
    config = write_settings(tmp_path / "settings.toml", db_urls)
    built = build_world(
        config,
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
            {
                "id_org": 3,
                "code": "closed",
                "name": "Closed",
                "status": "inactive",
                "org_serial_code": "CLSD",
            },
        ],
        erp_schema=True,
    )
    try:
        _populate(built.dbs)
        yield World(built.settings, built.dbs, config, db_urls)
    finally:
        built.dbs.dispose()


def _populate(dbs: Databases) -> None:
    with dbs.core.begin() as conn:
        conn.execute(
            sa.insert(core.serial_registry),
            [
                {
                    "serial_code": serial,
                    "tenant_id": tid,
                    "org_code": "BLVR",
                    "production_type": ptype,
                    "sku": "BAG01",
                    "job_ticket_id": 1,
                    "dag_token_id": dag,
                    "hash_signature": hash_signature(serial if good else serial + "x", SALT_HAT),
                    "hash_salt_version": version,
                    "checksum": serial[-1],
                    "created_at": OLD,
                }
                for serial, (tid, ptype, dag, version, good) in REGISTRY.items()
            ],
        )
    with dbs.tenant("DEFAULT").begin() as conn:
        conn.execute(
            sa.insert(tenant.routing_node),
            [
                {
                    "id_node": 3,
                    "id_graph": 1,
                    "node_code": "CUT",
                    "node_name": "Cutting",
                    "node_type": "operation",
                }
            ],
        )
        conn.execute(
            sa.insert(tenant.job_ticket),
            [
                {
                    "id_job_ticket": i,
                    "ticket_code": f"JT-{i}",
                    "status": status,
                    "production_type": "hatthasilpa",
                }
                for i, status in ((1, "in_progress"), (2, "completed"))
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
                    "current_node_id": 3,
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
        conn.execute(
            sa.insert(tenant.serial_link_outbox),
            [
                {
                    "id": i,
                    "serial_code": serial,
                    "dag_token_id": token,
                    "status": status,
                    "retry_count": 0,
                    "created_at": OLD,
                    "updated_at": OLD,
                }
                for i, (serial, token, status) in enumerate(OUTBOX, start=1)
            ],
        )
        conn.execute(
            sa.insert(tenant.serial_quarantine),
            [
                {
                    "id": i,
                    "serial_code": serial,
                    "source_table": "flow_token",
                    "source_id": source,
                    "reason": reason,
                    "detected_at": OLD,
                    "resolved_at": resolved,
                }
                for i, (serial, reason, source, resolved) in enumerate(QUARANTINE, start=1)
            ],
        )
    with dbs.tenant("maison_atelier").begin() as conn:
        conn.execute(
            sa.insert(tenant.flow_token),
            [
                {
                    "id_token": 5,
                    "id_instance": 1,
                    "token_type": "piece",
                    "status": "active",
                    "serial_number": TEMP,
                    "spawned_at": ERP_NOW,
                }
            ],
        )


def conclusions(facts: dict[str, Any], code: str = "DEFAULT") -> list[tuple[Any, ...]]:
    return [
        (c["source_table"], c["source_id"], c["outcome"], c["detail"], c["action"])
        for c in facts["tenants"][code]["conclusions"]
    ]


# ---------------------------------------------------------------- conclusions


def test_one_serial_per_conclusion_kind_and_nothing_written(world: World) -> None:
    before = world.digest()
    shown: list[str] = []
    for serial, expected in CASES.items():
        facts = world.facts(serial)
        assert facts["status"] == 0 and facts["found"], serial
        got = conclusions(facts)
        assert [c[:3] for c in got] == [e[:3] for e in expected], serial
        for (*_, detail, action), (*_, want_detail, want_action) in zip(got, expected, strict=True):
            assert want_detail in detail and want_action in action, (serial, detail, action)
        shown.append(json.dumps(facts))
        status, lines = world.explain(serial)
        assert status == 0
        shown.extend(lines)
    assert {c[2] for e in CASES.values() for c in e} == {  # every kind was met
        *OUTCOME_COUNTERS,
        "ok",
        "linked",
        "unlinked",
        "not_live",
    }
    assert world.digest() == before  # nothing written anywhere
    assert SALT_HAT not in "\n".join(shown)


def test_human_output(world: World) -> None:
    status, lines = world.explain(S["mis"])
    assert status == 0
    text = "\n".join(lines)
    assert lines[0] == f"serial {S['mis']}"
    assert lines[1].startswith("  format: standard (tenant BLVR, type HAT, sku BAG01, ")
    assert "  id 6: tenant DEFAULT (id 1), org_code BLVR, hatthasilpa, sku BAG01" in text
    assert "    core link (dag_token_id): token 999;" in text
    assert "    hash signature: right (salt hatthasilpa:1)" in text
    assert (
        "    id 15  piece  active  node 3 CUT  spawned "
        f"{ERP_NOW - timedelta(hours=15):%Y-%m-%d %H:%M:%S}"
    ) in lines
    assert "  job_ticket_serial: none" in lines
    assert "  serial_link_outbox: none" in lines
    assert (
        f"    id 1  registry_mismatch  flow_token 15  detected {OLD:%Y-%m-%d %H:%M:%S} UTC  "
        "open, still found"
    ) in lines
    assert (
        "    flow_token 15: registry_mismatch (registry linked to token 999, live token is "
        "15): already quarantined (open row 1)"
    ) in lines
    assert lines[-1] == "tenant maison_atelier (id 2): nothing carries this serial"

    _, lines = world.explain(S["stale"], "DEFAULT")
    assert any(
        "id 3  duplicate  flow_token 41" in x and x.endswith("open, no longer found by the check")
        for x in lines
    )
    _, lines = world.explain(S["unreg"], "DEFAULT")
    assert any(x.endswith(f"resolved {RECENT:%Y-%m-%d %H:%M:%S} UTC") for x in lines)
    _, lines = world.explain(S["core"], "DEFAULT")
    assert (
        "    id 2  token 12  dead  retries 0  created "
        f"{OLD:%Y-%m-%d %H:%M:%S} UTC  next attempt -" in lines
    )


def test_formats_registry_and_tenants(world: World) -> None:
    facts = world.facts(TEMP)
    assert facts["format"] == {"kind": "exempt", "detail": "exempt: ^TEMP-"}
    assert facts["registry"] is None
    assert conclusions(facts, "maison_atelier")[0][:3] == ("flow_token", 5, "legacy")
    only = world.facts(TEMP, "maison_atelier")
    assert list(only["tenants"]) == ["maison_atelier"]

    assert world.facts(f"{S['ok']}-STRAP")["format"] == {
        "kind": "component",
        "detail": f"component of {S['ok']}",
    }
    bad_date = S["ok"].replace("20251110", "20251340")
    assert (
        world.facts(bad_date)["format"]["detail"]
        == "standard shape, but 20251340 is not a valid date"
    )

    assert world.facts(S["ok"])["registry"]["hash_check"] == "right"
    assert world.facts(S["hash"])["registry"]["hash_check"] == "wrong"
    assert world.facts(S["unv"])["registry"]["hash_check"] == "no_salt"
    reg = world.facts(S["reg_only"])["registry"]
    assert (reg["tenant_id"], reg["tenant_code"], reg["tenant_active"]) == (3, "closed", False)
    status, lines = world.explain(S["reg_only"])
    assert (
        status == 0
        and "  id 12: tenant closed (id 3, not active), org_code BLVR, "
        "hatthasilpa, sku BAG01, status active, scope piece, created "
        f"{OLD:%Y-%m-%d %H:%M:%S} UTC"
        in lines
    )

    facts = world.facts(S["ok"].lower())  # exact match only: another serial
    assert facts["status"] == 1 and not facts["found"]
    assert facts["registry"] is None and all(
        not t["tokens"] and t["job_ticket_serial"] is None for t in facts["tenants"].values()
    )


def test_without_salts_hash_is_not_checked(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALTS_ENV)
    settings = load_settings(world.config)
    lines: list[str] = []
    assert (
        explain(settings, world.dbs, S["hash"], "DEFAULT", lines.append, clock=FixedClock(NOW)) == 0
    )
    assert "    hash signature: not checked: no salts configured" in lines
    assert any(
        x.startswith(
            "    flow_token 20: ok (registered for this tenant and linked to this token): "
        )
        for x in lines
    )


def test_unknown_serial_and_bad_input(world: World, tmp_path: Path) -> None:
    status, lines = world.explain("NOPE-0001")
    assert status == 1
    assert lines[-1] == "nothing is known about this serial: no registry row, no tenant row"
    assert world.facts("NOPE-0001")["found"] is False

    assert world.explain("NOPE-0001", "bad-code") == (
        2,
        [
            "bgworkers explain: tenant code 'bad-code' refused: must match ^[A-Za-z0-9_]{1,50}$, "
            "as it becomes part of database and lock names"
        ],
    )
    assert world.explain("NOPE-0001", "nobody") == (
        2,
        ["bgworkers explain: tenant nobody: not in core organization"],
    )
    assert world.explain("NOPE-0001", "default") == (
        2,
        [  # codes match exactly
            "bgworkers explain: tenant default: not in core organization; did you mean 'DEFAULT'?"
        ],
    )
    assert world.explain("", None)[0] == 2

    # only tenants the daemon serves may be named: not an inactive one (nothing is created)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert world.explain(S["reg_only"], "closed") == (
        2,
        [
            "bgworkers explain: tenant closed: organization id 3 is not active "
            "(status 'inactive'); "
            "only active tenants can be named"
        ],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failing_databases_are_named(world: World) -> None:
    with world.dbs.tenant("maison_atelier").begin() as conn:
        conn.execute(sa.text("DROP TABLE flow_token"))
    with world.dbs.core.begin() as conn:
        conn.execute(sa.text("DROP TABLE serial_registry"))
    facts = world.facts(S["ok"])
    assert facts["status"] == 0
    assert facts["registry"] is None and facts["registry_error"]
    assert facts["tenants"]["maison_atelier"]["error"]
    assert conclusions(facts)[1][2:4] == (
        "ok",
        "valid standard serial; registry not checked (core could not be read)",
    )
    status, lines = world.explain("NOPE-0001")
    assert status == 1
    assert lines[-1].endswith("(some databases could not be read)")


def test_read_only_connections_refuse_writes(world: World) -> None:
    row = {
        "serial_code": "X",
        "source_table": "flow_token",
        "source_id": 1,
        "reason": "duplicate",
        "detected_at": UTC_NOW,
    }
    for engine in (world.dbs.tenant("DEFAULT"), world.dbs.core):
        table = tenant.serial_quarantine if engine is not world.dbs.core else core.organization
        values = row if engine is not world.dbs.core else {"id_org": 9, "code": "x", "name": "x"}
        with pytest.raises(sa.exc.DBAPIError), read_only(engine) as conn:
            conn.execute(sa.insert(table).values(**values))
        with engine.begin() as conn:  # the pooled connection writes again afterwards
            conn.execute(sa.insert(table).values(**values))


# ---------------------------------------------------------------- the CLI


def test_cli(world: World) -> None:
    config = ("--config", str(world.config))
    done = bgworkers("explain", *config, S["core"], "--tenant", "DEFAULT", "--json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert list(facts["tenants"]) == ["DEFAULT"]
    assert conclusions(facts)[0][2] == "missing_core_link"
    done = bgworkers("explain", *config, "NOPE-0001", cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "nothing is known about this serial" in done.stdout


# ---------------------------------------------------------------- agreement with the job


AT = datetime(2025, 11, 14, 9, 30)  # naive UTC


def test_explain_agrees_with_the_job_on_demo_data(
    db_urls: DbUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over every serial of a tenant, explain's conclusions add up to the job's counters,
    and what it says a run would write is what the run writes."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(
        SALTS_ENV,
        json.dumps({f"{ptype}:{DEMO_SALT_VERSION}": salt for ptype, salt in DEMO_SALTS.items()}),
    )
    settings = load_settings(write_settings(tmp_path / "settings.toml", db_urls))
    dbs = Databases(settings)
    now = AT.replace(tzinfo=UTC)
    try:
        assert generate(settings, dbs, tenants=2, scale=1, seed=1, at=AT, out=lambda _: None) == 0
        engine = dbs.tenant("DEFAULT")
        ft, jts = tenant.flow_token, tenant.job_ticket_serial
        with engine.connect() as conn:
            serials = set(
                conn.execute(
                    sa.select(ft.c.serial_number).where(ft.c.serial_number.is_not(None))
                ).scalars()
            )
            serials.update(conn.execute(sa.select(jts.c.serial_number)).scalars())
        before = digest(dbs, ("DEFAULT", "maison_atelier"))
        counts: Counter[str] = Counter()
        would: set[tuple[Any, ...]] = set()
        for serial in sorted(serials):
            facts = gather(settings, dbs, serial, "DEFAULT", FixedClock(now))
            for c in facts.tenants[0].conclusions:
                if c["outcome"] not in OUTCOME_COUNTERS:
                    continue
                counts[OUTCOME_COUNTERS[c["outcome"]]] += 1
                if c["existing_row"] is None and c["outcome"] != "legacy":
                    detail = c["action"].split("spawned_token_id = ")[-1].split(",")[0]
                    would.add(
                        (
                            c["outcome"],
                            serial,
                            c["source_table"],
                            c["source_id"],
                            int(detail) if c["outcome"] == "missing_tenant_link" else None,
                        )
                    )
        assert digest(dbs, ("DEFAULT", "maison_atelier")) == before

        links = _links(engine)
        ctx = make_context(settings, dbs, "DEFAULT", now, "serial_consistency")
        counters = serial_consistency.run(ctx)
        kinds = Counter(w[0] for w in would)
        assert counters == {
            **{name: counts[name] for name in serial_consistency.COUNTERS},
            "fixed": kinds["missing_core_link"] + kinds["missing_tenant_link"],
            "quarantined": sum(n for k, n in kinds.items() if not k.startswith("missing_")),
            "errors": 0,
        }
        assert counters["duplicates"] and counters["orphaned"] and counters["mismatches"]
        assert _written(engine, AT, links) == would
    finally:
        dbs.dispose()


def _links(engine: sa.Engine) -> dict[int, int | None]:
    jts = tenant.job_ticket_serial
    with engine.connect() as conn:
        return {
            int(r[0]): r[1]
            for r in conn.execute(sa.select(jts.c.id_serial, jts.c.spawned_token_id))
        }


def _written(
    engine: sa.Engine,
    at: datetime,
    links: dict[int, int | None],
) -> set[tuple[Any, ...]]:
    """What the run wrote, in explain's terms (`links`: the tenant links before the run)."""
    q, box, jts = tenant.serial_quarantine, tenant.serial_link_outbox, tenant.job_ticket_serial
    with engine.connect() as conn:
        out = {
            (r.reason, r.serial_code, r.source_table, r.source_id, None)
            for r in conn.execute(sa.select(q).where(q.c.detected_at == at))
        }
        out |= {
            ("missing_core_link", r.serial_code, "flow_token", r.dag_token_id, None)
            for r in conn.execute(sa.select(box).where(box.c.created_at == at))
        }
        out |= {
            (
                "missing_tenant_link",
                r.serial_number,
                "job_ticket_serial",
                r.id_serial,
                r.spawned_token_id,
            )
            for r in conn.execute(sa.select(jts).where(jts.c.spawned_token_id.is_not(None)))
            if links[r.id_serial] is None
        }
    return out
