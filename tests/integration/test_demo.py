"""demo-data on SQLite and MariaDB: organizations, filled tables, planted cases, determinism."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import DbUrls, build_world, write_settings

from bgworkers.demo import DEMO_SALTS, generate, planted_counts
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.jobs.serials.format import Kind, classify, compile_patterns, parse_standard
from bgworkers.schema import core, own, tenant
from bgworkers.service import dbadmin
from bgworkers.settings import Settings

AT = datetime(2025, 11, 14, 9, 30)  # naive UTC
LIVE = ("ready", "active", "waiting", "paused")
TENANTS = {"DEFAULT": (1, "BLVR"), "maison_atelier": (2, "MAIS")}
#: Tables the demo leaves to the jobs (dashboards are written by dashboard refreshes).
JOB_TABLES = {
    "mv_token_flow_summary",
    "mv_node_bottlenecks",
    "mv_team_workload",
    "mv_cycle_time_analytics",
    "mv_dashboard_trends",
    "bgw_node_visit",
}


@dataclass
class Demo:
    settings: Settings
    dbs: Databases
    urls: DbUrls
    directory: Path
    lines: list[str] = field(default_factory=list)

    def run(self, **kwargs: Any) -> int:
        self.lines.clear()
        return generate(self.settings, self.dbs, **{**ARGS, **kwargs}, out=self.lines.append)

    def planted(self, code: str) -> dict[str, int]:
        line = next(x for x in self.lines if x.startswith(f"demo-data: tenant {code} planted:"))
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("planted:")[1])}

    def rows(self, code: str) -> dict[str, int]:
        line = next(x for x in self.lines if x.startswith(f"demo-data: tenant {code} ("))
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("rows:")[1])}


ARGS: dict[str, Any] = {"tenants": 2, "scale": 1.0, "seed": 7, "at": AT}


def _demo(urls: DbUrls, directory: Path, **kwargs: Any) -> Demo:
    """Demo data generated with ARGS (and `kwargs`) in `urls`' databases."""
    directory.mkdir(parents=True, exist_ok=True)
    world = build_world(write_settings(directory / "settings.toml", urls), demo={**ARGS, **kwargs})
    return Demo(world.settings, world.dbs, urls, directory, world.lines)


#: The tests reading the module's demo data run on one worker: it is generated once.
SHARED = pytest.mark.xdist_group("demo-data")


@pytest.fixture(scope="module")
def demo(module_db_urls: DbUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The demo data of ARGS, generated once per backend for the tests that only read it."""
    made = _demo(module_db_urls, tmp_path_factory.mktemp("demo"))
    yield made
    made.dbs.dispose()


@pytest.fixture
def own_demo(db_urls: DbUrls, tmp_path: Path) -> Iterator[Demo]:
    """The demo data of ARGS, for a test that changes it."""
    made = _demo(db_urls, tmp_path)
    yield made
    made.dbs.dispose()


def _second_set(urls: DbUrls, tmp_path: Path) -> DbUrls:
    """Another core + tenant database set on the same backend (dropped with the first)."""
    if urls.backend == "sqlite":
        other = tmp_path / "second"
        return DbUrls(
            "sqlite", f"sqlite:///{other}/core.db", f"sqlite:///{other}/tenant_{{code_lower}}.db"
        )
    return DbUrls(
        "mariadb",
        urls.core_url.replace("_core?", "_b_core?"),
        urls.tenant_url.replace("_t_{code_lower}", "_b_t_{code_lower}"),
    )


def _all(engine: sa.Engine, stmt: sa.Select[Any]) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# ---------------------------------------------------------------- organizations, tables


@SHARED
def test_organizations_and_databases(demo: Demo) -> None:
    org = core.organization
    rows = _all(
        demo.dbs.core,
        sa.select(
            org.c.id_org, org.c.code, org.c.name, org.c.status, org.c.org_serial_code
        ).order_by(org.c.id_org),
    )
    assert [tuple(r) for r in rows] == [
        (1, "DEFAULT", "Bellavier Atelier", "active", "BLVR"),
        (2, "maison_atelier", "Maison Atelier", "1", "MAIS"),
        (3, "closed_atelier", "Atelier Chiang Mai (closed)", "inactive", "CLSD"),
    ]
    tenants, problems = discover(demo.settings, demo.dbs.core)
    assert [t.code for t in tenants] == ["DEFAULT", "maison_atelier"] and not problems
    # The inactive organization gets no database.
    if demo.urls.backend == "sqlite":
        assert not (demo.directory / "tenant_closed_atelier.db").exists()
    else:
        with demo.dbs.core.connect() as conn:
            names = set(conn.execute(sa.text("SHOW DATABASES")).scalars())
        assert not any(name.endswith("t_closed_atelier") for name in names)
    assert any("done: 2 tenant(s)" in line for line in demo.lines)


@SHARED
def test_every_erp_table_is_filled(demo: Demo) -> None:
    for code, (org_id, _) in TENANTS.items():
        engine = demo.dbs.tenant(code)
        counts = {t.name: _count(engine, t) for t in tenant.metadata.sorted_tables}
        empty = [name for name, n in counts.items() if n == 0 and name not in JOB_TABLES]
        assert not empty, f"{code}: empty tables {empty}"
        assert all(counts[name] == 0 for name in JOB_TABLES)
        reported = demo.rows(code)
        for name, n in reported.items():
            if name != "serial_registry":
                assert counts[name] == n, (code, name)
        # scale 1: about a thousand serials, as many piece tokens, a registry row each
        assert 1000 <= counts["job_ticket_serial"] <= 1010
        assert 950 <= _live_or_not_pieces(engine) <= 1100
        reg = core.serial_registry
        with demo.dbs.core.connect() as conn:
            mine = conn.execute(sa.select(sa.func.count()).where(reg.c.tenant_id == org_id))
            assert 980 <= mine.scalar_one() <= 1010
    assert _count(demo.dbs.core, core.serial_registry) == sum(
        demo.rows(code)["serial_registry"] for code in TENANTS
    )


def _live_or_not_pieces(engine: sa.Engine) -> int:
    ft = tenant.flow_token
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).where(ft.c.token_type == "piece")).scalar_one()
        )


@SHARED
def test_token_statuses_types_and_histories(demo: Demo) -> None:
    ft, ev, asg = tenant.flow_token, tenant.token_event, tenant.token_assignment
    engine = demo.dbs.tenant("DEFAULT")
    kinds = Counter(
        (r.token_type, r.status) for r in _all(engine, sa.select(ft.c.token_type, ft.c.status))
    )
    assert {s for _, s in kinds} == {
        "ready",
        "active",
        "waiting",
        "paused",
        "completed",
        "scrapped",
    }
    assert {t for t, _ in kinds} == {"piece", "batch", "component"}
    types = {r[0] for r in _all(engine, sa.select(ev.c.event_type).distinct())}
    assert {
        "spawn",
        "enter_node",
        "start_work",
        "complete_work",
        "exit_node",
        "complete_token",
        "scrap",
    } <= types
    statuses = {r[0] for r in _all(engine, sa.select(asg.c.status).distinct())}
    assert {"assigned", "started", "completed"} <= statuses  # open and closed

    events: dict[int, list[Any]] = {}
    for r in _all(engine, sa.select(ev).order_by(ev.c.id_event)):
        events.setdefault(r.id_token, []).append(r)
    tokens = _all(engine, sa.select(ft))
    open_visits = 0
    for tok in tokens:
        history = events.get(tok.id_token, [])
        times = [e.event_time for e in history]
        assert times == sorted(times), tok.id_token
        if tok.status in LIVE:
            # live tokens keep their full history; the current visit never exits
            assert history[0].event_type == "spawn"
            at_node = [e for e in history if tok.current_node_id in (e.to_node_id, e.from_node_id)]
            assert at_node[-1].event_type in ("enter_node", "start_work", "pause"), tok
            open_visits += 1
        elif history and len(history) > 2:  # full history of an ended token
            assert history[-1].event_type == (
                "complete_token" if tok.status == "completed" else "scrap"
            )
            enters = sum(e.event_type == "enter_node" for e in history)
            exits = sum(e.event_type == "exit_node" for e in history)
            assert exits == enters - (tok.status == "scrapped")
        elif history:  # older tokens: spawn + end only
            assert [e.event_type for e in history] in (
                ["spawn", "complete_token"],
                ["spawn", "scrap"],
            )
        if tok.status == "completed":
            assert tok.completed_at is not None and tok.completed_at >= tok.spawned_at
    assert open_visits > 20


@SHARED
def test_time_zones(demo: Demo) -> None:
    """Serial tables are UTC, the others Asia/Bangkok (UTC+7), all anchored on `at`."""
    jts, ft = tenant.job_ticket_serial, tenant.flow_token
    engine = demo.dbs.tenant("DEFAULT")
    pairs = _all(
        engine,
        sa.select(jts.c.spawned_at, ft.c.spawned_at)
        .join(ft, ft.c.id_token == jts.c.spawned_token_id)
        .limit(50),
    )
    assert pairs and all(token - serial == timedelta(hours=7) for serial, token in pairs)
    latest = _all(engine, sa.select(sa.func.max(ft.c.spawned_at)))[0][0]
    assert AT + timedelta(hours=6) < latest <= AT + timedelta(hours=7)
    reg = core.serial_registry
    newest = _all(demo.dbs.core, sa.select(sa.func.max(reg.c.created_at)))[0][0]
    assert AT - timedelta(days=3) < newest <= AT


# ---------------------------------------------------------------- planted cases


@SHARED
def test_planted_counts_are_what_the_data_shows(demo: Demo) -> None:
    expected = planted_counts(1000, 0.001)
    everything = {r.serial_code: r for r in _all(demo.dbs.core, sa.select(core.serial_registry))}
    exempt = compile_patterns(demo.settings.jobs.serial_consistency.exempt_patterns)
    for code, (org_id, serial_code) in TENANTS.items():
        got = demo.planted(code)
        assert got == expected, code
        engine = demo.dbs.tenant(code)
        found = _findings(engine, org_id, everything, exempt)
        assert found == {
            "missing_tenant_link": got["missing_tenant_link"],
            "missing_core_link": got["missing_core_link"],
            "registry_mismatch": got["registry_mismatch"],
            "unregistered": got["unregistered"] + got["unregistered_other_tenant"],
            "unregistered_other_tenant": got["unregistered_other_tenant"],
            "invalid_format": got["invalid_format"] + got["component_bad_parent"],
            "checksum_fail": got["checksum_fail"],
            "hash_fail": got["hash_fail"],
            "duplicate": got["duplicate"],
            "legacy": sum(v for k, v in got.items() if k.startswith("legacy_")),
            "orphaned": got["orphaned_completed"]
            + got["orphaned_cancelled"]
            + got["orphaned_stale"],
            "outbox_due": got["outbox_due_new"] + got["outbox_due_retry"],
            "outbox_future": got["outbox_future"],
            "outbox_dead": got["outbox_dead"],
        }, code
        serials = [r[0] for r in _all(engine, sa.select(tenant.job_ticket_serial.c.serial_number))]
        standard = [s for s in serials if parse_standard(s) is not None]
        assert all(s.startswith(f"{serial_code}-") for s in standard)
        assert len(set(serials)) == len(serials)


def _findings(
    engine: sa.Engine, org_id: int, registry: dict[str, Any], exempt: Any
) -> dict[str, int]:
    """The serial-consistency cases of SPEC section 4, found with plain SQL and Python."""
    ft, jts, jt, box = (
        tenant.flow_token,
        tenant.job_ticket_serial,
        tenant.job_ticket,
        tenant.serial_link_outbox,
    )
    live = _all(
        engine,
        sa.select(ft.c.id_token, ft.c.token_type, ft.c.serial_number).where(
            ft.c.status.in_(LIVE), ft.c.serial_number.is_not(None)
        ),
    )
    carried = {r[0] for r in _all(engine, sa.select(ft.c.serial_number).distinct())}
    pieces = Counter(r.serial_number for r in live if r.token_type == "piece")
    found: Counter[str] = Counter()
    found["duplicate"] = sum(1 for n in pieces.values() if n > 1)
    for r in live:
        kind = classify(r.serial_number, exempt)
        if kind.is_legacy:
            found["legacy"] += 1
        elif kind is not Kind.STANDARD:
            found[kind.value] += 1
            continue
        else:
            reg = registry.get(r.serial_number)
            own = reg if reg is not None and reg.tenant_id == org_id else None
            key = "hatthasilpa" if own is None else own.production_type
            expected = hmac.new(
                DEMO_SALTS[key].encode(), r.serial_number.encode(), hashlib.sha256
            ).hexdigest()
            if own is not None and own.hash_signature != expected:
                found["hash_fail"] += 1
            if r.token_type != "piece" or pieces[r.serial_number] > 1:
                continue
            if own is None:
                found["unregistered"] += 1
                found["unregistered_other_tenant"] += reg is not None
            elif own.dag_token_id is None and own.production_type == "hatthasilpa":
                found["missing_core_link"] += 1
            elif own.dag_token_id is not None and own.dag_token_id != r.id_token:
                found["registry_mismatch"] += 1
    live_pieces = set(pieces)
    unlinked = _all(
        engine,
        sa.select(jts.c.serial_number, jts.c.generated_at, jt.c.status)
        .join(jt, jt.c.id_job_ticket == jts.c.id_job_ticket)
        .where(jts.c.spawned_token_id.is_(None)),
    )
    for serial, generated, status in unlinked:
        if serial in live_pieces:
            found["missing_tenant_link"] += 1
        elif serial not in carried and (
            status in ("completed", "cancelled") or generated < AT - timedelta(days=7)
        ):
            found["orphaned"] += 1
    for status, next_at in _all(engine, sa.select(box.c.status, box.c.next_attempt_at)):
        if status == "pending":
            found["outbox_due" if next_at is None or next_at <= AT else "outbox_future"] += 1
        elif status == "dead":
            found["outbox_dead"] += 1
    return dict(found)


@SHARED
def test_consistency_of_core_links(demo: Demo) -> None:
    """A linked registry row links the first token with its serial (mismatch: a scrapped one)."""
    reg, ft = core.serial_registry, tenant.flow_token
    tokens: dict[str, int] = {}
    for serial, token in _all(
        demo.dbs.tenant("DEFAULT"),
        sa.select(ft.c.serial_number, ft.c.id_token).order_by(ft.c.id_token),
    ):
        tokens.setdefault(serial, token)
    rows = _all(demo.dbs.core, sa.select(reg).where(reg.c.tenant_id == 1))
    linked = [r for r in rows if r.dag_token_id is not None]
    assert len(linked) > 0.9 * len(rows)
    assert all(r.production_type in ("hatthasilpa", "oem") for r in rows)
    assert all(r.hash_salt_version == 1 and len(r.hash_signature) == 64 for r in rows)
    assert [r.serial_code for r in linked if tokens.get(r.serial_code) != r.dag_token_id] == []


# ---------------------------------------------------------------- determinism, safety


def _fingerprint(demo: Demo) -> dict[str, str]:
    prints = {}
    engines = {"core": demo.dbs.core, **{code: demo.dbs.tenant(code) for code in TENANTS}}
    tables = {
        "core": [core.organization, core.serial_registry],
        **{
            code: [
                tenant.job_ticket,
                tenant.job_ticket_serial,
                tenant.flow_token,
                tenant.token_event,
                tenant.token_assignment,
                tenant.serial_link_outbox,
                tenant.team_member,
            ]
            for code in TENANTS
        },
    }
    for where, engine in engines.items():
        for table in tables[where]:
            digest = hashlib.sha256()
            for row in _all(engine, sa.select(table).order_by(*table.primary_key.columns)):
                digest.update(repr(tuple(row)).encode())
            prints[f"{where}.{table.name}"] = digest.hexdigest()
    return prints


@SHARED
def test_same_seed_and_at_give_the_same_rows(demo: Demo, tmp_path: Path) -> None:
    twin = _demo(_second_set(demo.urls, tmp_path), tmp_path / "twin")
    try:
        assert _fingerprint(twin) == _fingerprint(demo)
        assert twin.run(reset=True, seed=8) == 0
        differ = [k for k, v in _fingerprint(twin).items() if _fingerprint(demo)[k] != v]
        assert len(differ) >= 10
    finally:
        twin.dbs.dispose()


def test_refuses_without_reset_then_reset_starts_over(own_demo: Demo) -> None:
    demo = own_demo
    before = _count(demo.dbs.tenant("DEFAULT"), tenant.flow_token)
    assert demo.run() == 2
    assert any("refused" in line and "--reset" in line for line in demo.lines)
    assert _count(demo.dbs.tenant("DEFAULT"), tenant.flow_token) == before

    with demo.dbs.coordination.begin() as conn:  # a run recorded by the daemon
        conn.execute(
            own.run.insert().values(
                job="serial_outbox",
                tenant="DEFAULT",
                tick_at=AT,
                run_id="r1",
                host="h",
                pid=1,
                started_at=AT,
                status="ok",
            )
        )
    assert demo.run(reset=True, tenants=3, seed=9) == 0, "\n".join(demo.lines)
    assert any("--reset: deleted" in line for line in demo.lines)
    assert _count(demo.dbs.coordination, own.run) == 0
    assert _count(demo.dbs.core, core.organization) == 4
    for code in (*TENANTS, "atelier_003"):
        rows = demo.rows(code)
        assert _count(demo.dbs.tenant(code), tenant.flow_token) == rows["flow_token"]
    assert dbadmin.check(demo.settings, demo.dbs, lambda _: None) == 0


def test_progress_lines_while_generation_runs_long(db_urls: DbUrls, tmp_path: Path) -> None:
    made = _demo(db_urls, tmp_path, tenants=3, progress_every=0.05)
    try:
        progress = [line for line in made.lines if line.startswith("demo-data: progress: ")]
        assert progress, made.lines
        assert re.fullmatch(
            r"demo-data: progress: [0-3]/3 tenants done, [\d,]+ rows written, "
            r"now \w+, \d+ s",
            progress[-1],
        )
        assert made.run(reset=True) == 0  # fast at the default interval: no progress line
        assert not any("progress:" in line for line in made.lines)
    finally:
        made.dbs.dispose()


@SHARED
def test_db_check_passes_after_generation(demo: Demo) -> None:
    lines: list[str] = []
    assert dbadmin.check(demo.settings, demo.dbs, lines.append) == 0, lines
    assert sum(line.endswith(": ok") for line in lines) == 3


# ---------------------------------------------------------------- many tenants


def test_sixty_tenants_each_get_their_data(db_urls: DbUrls, tmp_path: Path) -> None:
    """Serials that carry no tenant prefix by design (LOT-, MO-, TEMP-, legacy) still differ
    between tenants: the registry's unique serial_code must never collide."""
    many = _demo(db_urls, tmp_path, tenants=60, scale=0.2)
    try:
        tenants, problems = discover(many.settings, many.dbs.core)
        assert len(tenants) == 60 and not problems
        reg = core.serial_registry
        by_org = sa.select(reg.c.org_code, sa.func.count()).group_by(reg.c.org_code)
        per_tenant = dict(_all(many.dbs.core, by_org))
        reported = 0
        for t in tenants:
            rows = many.rows(t.code)
            reported += rows["serial_registry"]
            assert per_tenant.get(t.code, 0) > 0 and rows["serial_registry"] > 0, t.code
            engine = many.dbs.tenant(t.code)
            for table in (tenant.job_ticket_serial, tenant.flow_token, tenant.token_event):
                assert _count(engine, table) == rows[table.name] > 0, (t.code, table.name)
        assert _count(many.dbs.core, reg) == reported == sum(per_tenant.values())
        exempt = _all(
            many.dbs.core,
            sa.select(reg.c.serial_code, reg.c.org_code).where(reg.c.serial_code.like("LOT-%")),
        )
        assert len(exempt) >= 60
        assert len({serial for serial, _ in exempt}) == len(exempt)
        assert {code for _, code in exempt} == {t.code for t in tenants}
    finally:
        many.dbs.dispose()
