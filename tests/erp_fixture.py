"""An ERP install as the ERP's own PHP migrations make it, written from the ERP's documents.

The DDL below is the ERP's documented DDL (core `bgerp`, tenant `bgerp_t_<code>`),
as SQL text in its MariaDB form; `sqlite_form` translates it for SQLite.  It is
independent of `bgworkers.schema` on purpose: the point is to test this
project against the tables a real install has, not against its own idea of
them.  The dashboard tables come in the two documented shapes:

- "t27": the ERP migration's DDL: percentile columns, no name columns, no
  `mv_dashboard_trends` (the rollback plan lists four `mv_` tables);
- "guide": the setup guide's columns: names, no `p50_minutes`/`p95_minutes`,
  and an `mv_dashboard_trends` of the install's own choosing.

The data: the dashboard scenario of `tests/dashboard_data.py` (fitted to the
ERP's constraints: ENUM team categories, one assignment per token and node), a
few serials for the serial jobs, and the PHP script's earlier snapshots in the
mv_* tables, some past retention.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import dashboard_data as dd
import sqlalchemy as sa
from jobs_helpers import bad_check, std

from bgworkers.jobs.serials.format import hash_signature

SHAPES = ("t27", "guide")
OPTIONS = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"

CORE = [
    """CREATE TABLE organization (
  id_org INT PRIMARY KEY AUTO_INCREMENT,
  code VARCHAR(50) UNIQUE NOT NULL,
  name VARCHAR(200) NOT NULL,
  status ENUM('active','inactive') DEFAULT 'active',
  org_serial_code VARCHAR(8) UNIQUE NULL,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP
)""",
    """CREATE TABLE serial_registry (
  id_serial BIGINT PRIMARY KEY AUTO_INCREMENT,
  serial_code VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE NOT NULL,
  tenant_id INT NOT NULL,
  org_code VARCHAR(50) NOT NULL,
  production_type ENUM('hatthasilpa','oem','classic') NOT NULL,
  sku VARCHAR(50) NULL, mo_id BIGINT NULL, job_ticket_id BIGINT NULL,
  dag_token_id BIGINT NULL,
  created_at DATETIME NOT NULL DEFAULT (UTC_TIMESTAMP()),
  issued_by VARCHAR(64) NULL,
  status ENUM('active','used','scrapped','cancelled') DEFAULT 'active',
  hash_signature VARCHAR(128) NOT NULL,
  hash_salt_version TINYINT UNSIGNED DEFAULT 1,
  checksum CHAR(1) NOT NULL,
  serial_scope ENUM('piece','batch') DEFAULT 'piece',
  linked_source ENUM('dag_token','job_ticket') NULL,
  serial_type ENUM('product','component','subassembly') DEFAULT 'product',
  batch_code VARCHAR(50) NULL, component_category VARCHAR(50) NULL,
  serial_origin_source ENUM('auto_mo','auto_job','manual_entry','import_migration','api_generated') DEFAULT 'auto_job',
  INDEX idx_tenant_date (tenant_id, created_at), INDEX idx_dag_token (dag_token_id),
  INDEX idx_org_code (org_code), INDEX idx_status (status)
)""",  # noqa: E501
    """CREATE TABLE serial_seq_daily (
  org_code VARCHAR(50) NOT NULL, seq_date DATE NOT NULL, last_seq INT NOT NULL DEFAULT 0,
  PRIMARY KEY (org_code, seq_date)
)""",
]

TENANT = [
    """CREATE TABLE routing_graph (
  id_graph INT PRIMARY KEY AUTO_INCREMENT, code VARCHAR(50) NOT NULL, name VARCHAR(200) NOT NULL,
  graph_type VARCHAR(30) NULL, is_published TINYINT NOT NULL DEFAULT 0,
  production_type VARCHAR(20) NULL
)""",
    """CREATE TABLE routing_node (
  id_node INT PRIMARY KEY AUTO_INCREMENT, id_graph INT NOT NULL,
  node_code VARCHAR(50) NOT NULL, node_name VARCHAR(200) NOT NULL, node_type VARCHAR(30) NULL,
  estimated_minutes INT NULL, sla_minutes INT NULL, wip_limit INT NULL,
  concurrency_limit INT NULL, team_category VARCHAR(50) NULL, preferred_team_id INT NULL,
  allowed_team_ids JSON NULL,
  INDEX idx_graph (id_graph)
)""",
    """CREATE TABLE team (
  id_team INT PRIMARY KEY AUTO_INCREMENT, code VARCHAR(50) NOT NULL, name VARCHAR(200) NOT NULL,
  id_org INT NULL,
  team_category ENUM('cutting','sewing','qc','finishing','general') NULL,
  production_mode VARCHAR(20) NULL, active TINYINT NOT NULL DEFAULT 1
)""",
    """CREATE TABLE team_member (
  id_team INT NOT NULL, id_member INT NOT NULL, role VARCHAR(30) NULL,
  capacity_per_day INT NULL, active TINYINT NOT NULL DEFAULT 1,
  PRIMARY KEY (id_team, id_member), INDEX idx_member (id_member)
)""",
    """CREATE TABLE job_ticket (
  id_job_ticket INT PRIMARY KEY AUTO_INCREMENT, ticket_code VARCHAR(50) NOT NULL,
  job_name VARCHAR(200) NULL, target_qty INT NULL, status VARCHAR(30) NOT NULL,
  process_mode ENUM('batch','piece') NULL, routing_mode VARCHAR(20) NULL,
  graph_instance_id INT NULL, id_mo INT NULL, sku VARCHAR(50) NULL,
  production_type ENUM('hatthasilpa','classic','hybrid') NOT NULL DEFAULT 'hatthasilpa'
)""",
    """CREATE TABLE job_graph_instance (
  id_instance INT PRIMARY KEY AUTO_INCREMENT, id_job_ticket INT NOT NULL, id_graph INT NOT NULL,
  status ENUM('active','paused','completed','cancelled') DEFAULT 'active',
  production_type VARCHAR(20) NULL, started_at DATETIME NULL, completed_at DATETIME NULL,
  INDEX idx_ticket (id_job_ticket)
)""",
    """CREATE TABLE job_ticket_serial (
  id_serial INT PRIMARY KEY AUTO_INCREMENT,
  id_job_ticket INT NOT NULL,
  serial_number VARCHAR(100) NOT NULL,
  sequence_no INT NOT NULL,
  generated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  spawned_at DATETIME NULL,
  spawned_token_id INT NULL,
  UNIQUE KEY idx_serial (serial_number), KEY idx_ticket (id_job_ticket),
  KEY idx_spawned (spawned_at, spawned_token_id),
  UNIQUE KEY uniq_ticket_seq (id_job_ticket, sequence_no)
)""",
    """CREATE TABLE flow_token (
  id_token INT PRIMARY KEY AUTO_INCREMENT,
  id_instance INT,
  token_type ENUM('batch','piece','component') DEFAULT 'piece',
  serial_number VARCHAR(100) NULL, INDEX idx_serial (serial_number),
  parent_token_id INT NULL, current_node_id INT NULL, qty DECIMAL(10,2),
  status ENUM('ready','active','waiting','paused','completed','scrapped') DEFAULT 'ready',
  spawned_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  start_at DATETIME NULL, completed_at DATETIME NULL, scrapped_at DATETIME NULL,
  actual_duration_ms BIGINT UNSIGNED NULL,
  component_code VARCHAR(50) NULL, root_serial VARCHAR(128) NULL, root_token_id INT NULL
)""",
    """CREATE TABLE token_assignment (
  id_assignment INT PRIMARY KEY AUTO_INCREMENT, id_token INT NOT NULL, id_node INT NOT NULL,
  assigned_to_user_id INT NULL, assigned_by_user_id INT NULL, assigned_to_type VARCHAR(20) NULL,
  assignment_type ENUM('PIN','PLAN','AUTO') NULL,
  status ENUM('assigned','accepted','started','paused','completed','cancelled','rejected')
    DEFAULT 'assigned',
  assigned_at DATETIME NULL, accepted_at DATETIME NULL, started_at DATETIME NULL,
  UNIQUE KEY uk_token_node (id_token, id_node)
)""",
    """CREATE TABLE token_event (
  id_event INT PRIMARY KEY AUTO_INCREMENT, id_token INT NOT NULL,
  event_type ENUM('spawn','enter_node','start_work','pause_work','resume_work','complete_work',
    'exit_node','split','join','qc_pass','qc_fail','complete_token','scrap',
    'replacement_created','replacement_of') NOT NULL,
  from_node_id INT NULL, to_node_id INT NULL, operator_user_id INT NULL,
  event_time DATETIME NOT NULL, event_data JSON NULL,
  INDEX idx_token_time (id_token, event_time)
)""",
    """CREATE TABLE serial_link_outbox (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  serial_code VARCHAR(64) NOT NULL,
  dag_token_id BIGINT NOT NULL,
  status ENUM('pending','done','dead') DEFAULT 'pending',
  retry_count INT DEFAULT 0,
  last_error TEXT NULL,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  updated_at DATETIME DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  INDEX idx_status (status, created_at), INDEX idx_retry (status, retry_count)
)""",
    """CREATE TABLE serial_quarantine (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  serial_code VARCHAR(64) NOT NULL,
  source_table VARCHAR(50) NOT NULL,
  source_id BIGINT NULL,
  reason ENUM('invalid_format','checksum_fail','hash_fail','duplicate') NOT NULL,
  detected_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  resolved_at DATETIME NULL,
  INDEX idx_status (resolved_at, reason)
)""",
    """CREATE TABLE mv_token_flow_summary (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, graph_id INT NULL, node_id INT NULL, team_id INT NULL,
  wip_count INT NOT NULL DEFAULT 0, completed_count INT NOT NULL DEFAULT 0,
  waiting_count INT NOT NULL DEFAULT 0, KEY idx_snapshot (snapshot_at))""",
]

T27 = [
    """CREATE TABLE mv_node_bottlenecks (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, node_id INT NOT NULL, queue_depth INT NOT NULL DEFAULT 0,
  avg_wait_minutes DECIMAL(10,2) NULL, bottleneck_score DECIMAL(10,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
    """CREATE TABLE mv_team_workload (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, team_id INT NOT NULL, active_tokens INT NOT NULL DEFAULT 0,
  waiting_tokens INT NOT NULL DEFAULT 0, avg_load DECIMAL(5,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
    """CREATE TABLE mv_cycle_time_analytics (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, node_id INT NULL, team_id INT NULL,
  period_start DATE NOT NULL, period_end DATE NOT NULL, token_count INT NOT NULL DEFAULT 0,
  p50_minutes DECIMAL(10,2) NULL, p95_minutes DECIMAL(10,2) NULL, avg_minutes DECIMAL(10,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
]

GUIDE = [
    """CREATE TABLE mv_node_bottlenecks (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, node_id INT NOT NULL, node_code VARCHAR(50) NULL,
  node_name VARCHAR(200) NULL, queue_depth INT NOT NULL DEFAULT 0,
  avg_wait_minutes DECIMAL(10,2) NULL, bottleneck_score DECIMAL(10,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
    """CREATE TABLE mv_team_workload (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, team_id INT NOT NULL, team_name VARCHAR(200) NULL,
  team_category VARCHAR(50) NULL, active_tokens INT NOT NULL DEFAULT 0,
  waiting_tokens INT NOT NULL DEFAULT 0, avg_load DECIMAL(5,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
    """CREATE TABLE mv_cycle_time_analytics (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, node_id INT NULL, team_id INT NULL,
  period_start DATE NOT NULL, period_end DATE NOT NULL, token_count INT NOT NULL DEFAULT 0,
  avg_minutes DECIMAL(10,2) NULL,
  KEY idx_snapshot (snapshot_at))""",
    # no documented DDL: the guide's columns, types of this install's choosing
    """CREATE TABLE mv_dashboard_trends (id INT AUTO_INCREMENT PRIMARY KEY,
  snapshot_at DATETIME NOT NULL, period_date DATE NOT NULL, production_type VARCHAR(32) NOT NULL,
  graph_id INT NULL, tokens_spawned INT NOT NULL DEFAULT 0, tokens_completed INT NOT NULL DEFAULT 0,
  avg_lead_time_hours DECIMAL(10,2) NULL, throughput_per_day DECIMAL(10,2) NULL,
  KEY idx_snapshot (snapshot_at), KEY idx_period (period_date))""",
]


def mariadb_form(database: str, shape: str = "t27") -> list[str]:
    """The DDL of one database ("core" or "tenant") as the ERP runs it on MariaDB/MySQL."""
    statements = CORE if database == "core" else TENANT + (T27 if shape == "t27" else GUIDE)
    return [s + OPTIONS for s in statements]


_INLINE_INDEX = re.compile(r",\s*(UNIQUE\s+)?(?:KEY|INDEX)\s+(\w+)\s*\(([^)]*)\)", re.I)


def sqlite_form(database: str, shape: str = "t27") -> list[str]:
    """The same DDL for SQLite: ENUMs as TEXT, inline keys as CREATE INDEX (SQLite
    index names are per database, so they get the table's name in front)."""
    out = []
    for stmt in mariadb_form(database, shape):
        stmt = stmt.replace(OPTIONS, "")
        table = re.search(r"CREATE TABLE (\w+)", stmt)
        assert table is not None
        name = table.group(1)
        indexes = [
            (unique, f"{name}_{ix}", cols) for unique, ix, cols in _INLINE_INDEX.findall(stmt)
        ]
        stmt = _INLINE_INDEX.sub("", stmt)
        stmt = re.sub(r"ENUM\((?:'[^']*',?\s*)+\)", "TEXT", stmt)
        stmt = re.sub(
            r"(?:BIG)?INT (?:PRIMARY KEY AUTO_INCREMENT|AUTO_INCREMENT PRIMARY KEY)",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            stmt,
        )
        stmt = stmt.replace("CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", "COLLATE BINARY")
        stmt = stmt.replace("DEFAULT (UTC_TIMESTAMP())", "DEFAULT CURRENT_TIMESTAMP")
        stmt = stmt.replace(" ON UPDATE CURRENT_TIMESTAMP", "").replace(" UNSIGNED", "")
        out.append(stmt)
        out += [
            f"CREATE {'UNIQUE ' if unique else ''}INDEX {ix} ON {name} ({cols})"
            for unique, ix, cols in indexes
        ]
    return out


def ddl(engine: sa.Engine, database: str, shape: str = "t27") -> list[str]:
    return (sqlite_form if engine.dialect.name == "sqlite" else mariadb_form)(database, shape)


def build(engine: sa.Engine, database: str, shape: str = "t27") -> None:
    with engine.begin() as conn:
        for stmt in ddl(engine, database, shape):
            conn.exec_driver_sql(stmt)


# ------------------------------------------------------------------------------- data

NOW, SNAP = dd.NOW, dd.SNAP  # 2025-03-09 20:30 UTC = 2025-03-10 03:30 ERP-local
UTC_NOW = NOW.replace(tzinfo=None)
SALT = "0123456789abcdef" * 4
SALTS_ENV = "BGWORKERS_JOBS__SERIAL_CONSISTENCY__SALTS"
SALTS = json.dumps({"hatthasilpa:1": SALT})

ORGS = [
    {
        "id_org": 1,
        "code": "DEFAULT",
        "name": "Bellavier Atelier",
        "status": "active",
        "org_serial_code": "BLVR",
    },
]
#: the serial scenario: token -> serial (tokens of the dashboard scenario)
SERIAL = {name: std(seq) for seq, name in enumerate(("core", "tenant", "orphan"), start=1)}
BAD = bad_check(std(4))
TOKEN_SERIALS = {1: SERIAL["core"], 2: SERIAL["tenant"], 3: BAD}
#: serial -> dag_token_id in the registry (None: the core link is missing)
REGISTRY = {SERIAL["core"]: None, SERIAL["tenant"]: 2, SERIAL["orphan"]: None, BAD: None}
#: job-ticket serials: (id, ticket, serial, spawned_token_id)
JTS = [(1, 1, SERIAL["core"], 1), (2, 1, SERIAL["tenant"], None), (3, 2, SERIAL["orphan"], None)]
TICKETS = [(1, "JT-1", "in_progress"), (2, "JT-2", "completed")]

#: the ERP's ENUM has no 'edge': Echo is a 'general' team here
TEAMS = [(i, c, n, "general" if cat == "edge" else cat, a) for i, c, n, cat, a in dd.TEAMS]
WORKLOAD = {
    k: (v[0], "general" if v[1] == "edge" else v[1], *v[2:]) for k, v in dd.WORKLOAD.items()
}
#: one assignment per (token, node) (the ERP's unique key): the second open one of
#: token 2 is at another node; the latest open one still decides the team
ASSIGNMENTS = [(i, tok, 11 if i == 3 else n, u, s) for i, tok, n, u, s in dd.ASSIGNMENTS]

#: The PHP script's earlier snapshots: (snapshot_at, past every retention)
PHP_SNAPSHOTS = [(SNAP - timedelta(days=40), True), (SNAP - timedelta(hours=1), False)]


def _insert(conn: sa.Connection, name: str, rows: list[dict[str, Any]]) -> None:
    table = sa.Table(name, sa.MetaData(), autoload_with=conn)
    conn.execute(table.insert(), rows)


def load_core(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _insert(conn, "organization", ORGS)
        _insert(
            conn,
            "serial_registry",
            [
                {
                    "serial_code": s,
                    "tenant_id": 1,
                    "org_code": "BLVR",
                    "production_type": "hatthasilpa",
                    "sku": "BAG01",
                    "job_ticket_id": 1,
                    "dag_token_id": token,
                    "created_at": UTC_NOW - timedelta(days=10),
                    "hash_signature": hash_signature(s, SALT),
                    "hash_salt_version": 1,
                    "checksum": s[-1],
                }
                for s, token in REGISTRY.items()
            ],
        )
        _insert(
            conn,
            "serial_seq_daily",
            [{"org_code": "BLVR", "seq_date": UTC_NOW.date(), "last_seq": 4}],
        )


def load_tenant(engine: sa.Engine, shape: str) -> None:
    with engine.begin() as conn:
        _insert(
            conn,
            "routing_graph",
            [
                {"id_graph": g, "code": c, "name": n, "production_type": p, "is_published": 1}
                for g, c, n, p in dd.GRAPHS
            ],
        )
        _insert(
            conn,
            "routing_node",
            [
                {
                    "id_node": n,
                    "id_graph": g,
                    "node_code": c,
                    "node_name": name,
                    "node_type": "operation",
                    "estimated_minutes": 30,
                }
                for n, g, c, name in dd.NODES
            ],
        )
        _insert(
            conn,
            "team",
            [
                {"id_team": i, "code": c, "name": n, "team_category": cat, "active": a, "id_org": 1}
                for i, c, n, cat, a in TEAMS
            ],
        )
        _insert(
            conn,
            "team_member",
            [{"id_team": tm, "id_member": u, "active": a, "role": "op"} for tm, u, a in dd.MEMBERS],
        )
        _insert(
            conn,
            "job_ticket",
            [
                {
                    "id_job_ticket": i,
                    "ticket_code": c,
                    "status": s,
                    "process_mode": "piece",
                    "production_type": "hatthasilpa",
                }
                for i, c, s in TICKETS
            ],
        )
        _insert(
            conn,
            "job_graph_instance",
            [
                {
                    "id_instance": i,
                    "id_job_ticket": 1,
                    "id_graph": g,
                    "status": "active",
                    "production_type": p,
                }
                for i, g, p in dd.INSTANCES
            ],
        )
        tokens = [dd.token_row(*row) for row in dd.TOKENS]
        for token in tokens:
            token["serial_number"] = TOKEN_SERIALS.get(token["id_token"])
        _insert(conn, "flow_token", tokens)
        _insert(
            conn,
            "token_assignment",
            [
                {
                    "id_assignment": i,
                    "id_token": tok,
                    "id_node": n,
                    "assigned_to_user_id": u,
                    "status": s,
                    "assigned_at": dd.at("03-01 00:00"),
                    "assignment_type": "PLAN",
                }
                for i, tok, n, u, s in ASSIGNMENTS
            ],
        )
        _insert(conn, "token_event", [dd.event_row(*row) for row in dd.EVENTS])
        at = UTC_NOW - timedelta(days=1)
        _insert(
            conn,
            "job_ticket_serial",
            [
                {
                    "id_serial": i,
                    "id_job_ticket": t,
                    "serial_number": s,
                    "sequence_no": i,
                    "generated_at": at,
                    "spawned_token_id": tok,
                    "spawned_at": at if tok else None,
                }
                for i, t, s, tok in JTS
            ],
        )
        _insert(
            conn,
            "serial_quarantine",
            [
                {
                    "serial_code": "OLD-1",
                    "source_table": "flow_token",
                    "source_id": 99,
                    "reason": "invalid_format",
                    "detected_at": at,
                    "resolved_at": at,
                }
            ],
        )
        for snapshot_at, _old in PHP_SNAPSHOTS:
            _php_snapshot(conn, shape, snapshot_at)


def _php_snapshot(conn: sa.Connection, shape: str, at: datetime) -> None:
    """One snapshot of the ERP's PHP refresh script, in the install's shape."""
    _insert(
        conn,
        "mv_token_flow_summary",
        [
            {
                "snapshot_at": at,
                "graph_id": 1,
                "node_id": 10,
                "team_id": None,
                "wip_count": 9,
                "completed_count": 9,
                "waiting_count": 9,
            }
        ],
    )
    names = {"node_code": "OLD", "node_name": "Old"} if shape == "guide" else {}
    _insert(
        conn,
        "mv_node_bottlenecks",
        [
            {
                "snapshot_at": at,
                "node_id": 10,
                "queue_depth": 9,
                "avg_wait_minutes": 9,
                "bottleneck_score": 9,
                **names,
            }
        ],
    )
    names = {"team_name": "Old", "team_category": "qc"} if shape == "guide" else {}
    _insert(
        conn,
        "mv_team_workload",
        [
            {
                "snapshot_at": at,
                "team_id": 1,
                "active_tokens": 9,
                "waiting_tokens": 9,
                "avg_load": 9,
                **names,
            }
        ],
    )
    pct = {"p50_minutes": 9, "p95_minutes": 9} if shape == "t27" else {}
    _insert(
        conn,
        "mv_cycle_time_analytics",
        [
            {
                "snapshot_at": at,
                "node_id": 10,
                "team_id": None,
                "period_start": at.date(),
                "period_end": at.date(),
                "token_count": 9,
                "avg_minutes": 9,
                **pct,
            }
        ],
    )
    if shape == "guide" and at < SNAP - timedelta(days=30):  # an old trends snapshot
        _insert(
            conn,
            "mv_dashboard_trends",
            [
                {
                    "snapshot_at": at,
                    "period_date": at.date(),
                    "production_type": "hatthasilpa",
                    "graph_id": 1,
                    "tokens_spawned": 9,
                    "tokens_completed": 9,
                }
            ],
        )


#: ERP tables the jobs must never write (the serial jobs write job_ticket_serial,
#: serial_link_outbox, serial_quarantine and serial_registry.dag_token_id)
UNTOUCHED = {
    "core": ("organization", "serial_seq_daily"),
    "tenant": (
        "routing_graph",
        "routing_node",
        "team",
        "team_member",
        "job_ticket",
        "job_graph_instance",
        "flow_token",
        "token_assignment",
        "token_event",
    ),
}
