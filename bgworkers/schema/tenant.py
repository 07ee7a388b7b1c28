"""Tenant database (production name `bgerp_t_<code>`): production tables and dashboards.

`define(metadata, erp_baseline=True)` gives the tables as the ERP ships them;
the default (full) form adds what this project's migrations add:
`serial_link_outbox.next_attempt_at` and its index, three quarantine reasons,
`mv_dashboard_trends`, and `bgw_node_visit`, the project's record of node visits
for `mv_cycle_time_analytics`.  ERP timestamps are naive local time of the ERP.
"""

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Enum,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
)

from bgworkers.db.types import BigId

ERP_QUARANTINE_REASONS = ("invalid_format", "checksum_fail", "hash_fail", "duplicate")
ADDED_QUARANTINE_REASONS = ("orphaned", "registry_mismatch", "unregistered")
TOKEN_STATUSES = ("ready", "active", "waiting", "paused", "completed", "scrapped")
ASSIGNMENT_STATUSES = (
    "assigned",
    "accepted",
    "started",
    "paused",
    "completed",
    "cancelled",
    "rejected",
)
OUTBOX_STATUSES = ("pending", "done", "dead")


def _snapshot_table(metadata: MetaData, name: str, *columns: Column[object]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("snapshot_at", DateTime, nullable=False),
        *columns,
        Index(f"ix_{name}_snapshot", "snapshot_at"),
    )


def define(metadata: MetaData, erp_baseline: bool = False) -> MetaData:
    reasons = ERP_QUARANTINE_REASONS + (() if erp_baseline else ADDED_QUARANTINE_REASONS)
    Table(
        "routing_graph",
        metadata,
        Column("id_graph", Integer, primary_key=True),
        Column("code", String(50), nullable=False),
        Column("name", String(200), nullable=False),
        Column("production_type", String(20), nullable=False),
    )
    Table(
        "routing_node",
        metadata,
        Column("id_node", Integer, primary_key=True),
        Column("id_graph", Integer, nullable=False, index=True),
        Column("node_code", String(50), nullable=False),
        Column("node_name", String(200), nullable=False),
        Column("node_type", String(30), nullable=False),
        Column("wip_limit", Integer),
        Column("sla_minutes", Integer),
    )
    Table(
        "team",
        metadata,
        Column("id_team", Integer, primary_key=True),
        Column("code", String(50), nullable=False),
        Column("name", String(200), nullable=False),
        Column("team_category", String(50)),
        Column("active", SmallInteger, nullable=False, server_default="1"),
    )
    Table(
        "team_member",
        metadata,
        Column("id_team", Integer, primary_key=True),
        Column("id_member", Integer, primary_key=True),
        Column("active", SmallInteger, nullable=False, server_default="1"),
        Index("ix_team_member_member", "id_member"),
    )
    Table(
        "job_ticket",
        metadata,
        Column("id_job_ticket", Integer, primary_key=True),
        Column("ticket_code", String(50), nullable=False),
        Column("job_name", String(200)),
        Column("status", String(20), nullable=False),
        Column("process_mode", String(20)),
        Column(
            "production_type",
            Enum("hatthasilpa", "classic", "hybrid", name="ticket_production_type"),
            nullable=False,
        ),
        Column("sku", String(64)),
        Column("target_qty", Integer),
    )
    Table(
        "job_graph_instance",
        metadata,
        Column("id_instance", Integer, primary_key=True),
        Column("id_job_ticket", Integer, nullable=False, index=True),
        Column("id_graph", Integer, nullable=False),
        Column("status", String(20), nullable=False),
        Column("production_type", String(20)),
    )
    Table(
        "job_ticket_serial",
        metadata,
        Column("id_serial", BigId, primary_key=True, autoincrement=True),
        Column("id_job_ticket", Integer, nullable=False, index=True),
        Column("serial_number", String(100), nullable=False, unique=True),
        Column("sequence_no", Integer, nullable=False),
        Column("generated_at", DateTime, nullable=False),
        Column("spawned_at", DateTime),
        Column("spawned_token_id", BigId, index=True),
    )
    Table(
        "flow_token",
        metadata,
        Column("id_token", BigId, primary_key=True, autoincrement=True),
        Column("id_instance", Integer, nullable=False, index=True),
        Column(
            "token_type", Enum("batch", "piece", "component", name="token_type"), nullable=False
        ),
        Column("serial_number", String(100), index=True),
        Column("current_node_id", Integer),
        Column("status", Enum(*TOKEN_STATUSES, name="token_status"), nullable=False),
        Column("spawned_at", DateTime, nullable=False),
        Column("start_at", DateTime),
        Column("completed_at", DateTime),
        Column("actual_duration_ms", BigId),
        Index("ix_flow_token_status_node", "status", "current_node_id"),
    )
    Table(
        "token_assignment",
        metadata,
        Column("id_assignment", BigId, primary_key=True, autoincrement=True),
        Column("id_token", BigId, nullable=False, index=True),
        Column("id_node", Integer, nullable=False),
        Column("assigned_to_user_id", Integer, nullable=False),
        Column("status", Enum(*ASSIGNMENT_STATUSES, name="assignment_status"), nullable=False),
        Column("assigned_at", DateTime, nullable=False),
    )
    Table(
        "token_event",
        metadata,
        Column("id_event", BigId, primary_key=True, autoincrement=True),
        Column("id_token", BigId, nullable=False),
        Column("event_type", String(30), nullable=False),
        Column("from_node_id", Integer),
        Column("to_node_id", Integer),
        Column("operator_user_id", Integer),
        Column("event_time", DateTime, nullable=False),
        Index("ix_token_event_token", "id_token", "event_time"),
        Index("ix_token_event_type_time", "event_type", "event_time"),
    )
    outbox_extra = (
        ()
        if erp_baseline
        else (
            Column("next_attempt_at", DateTime),
            Index("ix_serial_link_outbox_due", "status", "next_attempt_at"),
        )
    )
    Table(
        "serial_link_outbox",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("serial_code", String(100), nullable=False),
        Column("dag_token_id", BigId, nullable=False),
        Column(
            "status",
            Enum(*OUTBOX_STATUSES, name="outbox_status"),
            nullable=False,
            server_default="pending",
        ),
        Column("retry_count", Integer, nullable=False, server_default="0"),
        Column("last_error", Text),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        *outbox_extra,
    )
    Table(
        "serial_quarantine",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("serial_code", String(100), nullable=False, index=True),
        Column("source_table", String(64), nullable=False),
        Column("source_id", BigId),
        Column("reason", Enum(*reasons, name="quarantine_reason"), nullable=False),
        Column("detected_at", DateTime, nullable=False),
        Column("resolved_at", DateTime),
    )
    _snapshot_table(
        metadata,
        "mv_token_flow_summary",
        Column("graph_id", Integer),
        Column("node_id", Integer),
        Column("team_id", Integer),
        Column("wip_count", Integer, nullable=False),
        Column("completed_count", Integer, nullable=False),
        Column("waiting_count", Integer, nullable=False),
    )
    _snapshot_table(
        metadata,
        "mv_node_bottlenecks",
        Column("node_id", Integer, nullable=False),
        Column("node_code", String(50)),
        Column("node_name", String(200)),
        Column("queue_depth", Integer, nullable=False),
        Column("avg_wait_minutes", Numeric(12, 2), nullable=False),
        Column("bottleneck_score", Numeric(14, 2), nullable=False),
    )
    _snapshot_table(
        metadata,
        "mv_team_workload",
        Column("team_id", Integer, nullable=False),
        Column("team_name", String(200)),
        Column("team_category", String(50)),
        Column("active_tokens", Integer, nullable=False),
        Column("waiting_tokens", Integer, nullable=False),
        Column("avg_load", Numeric(5, 2), nullable=False),
    )
    _snapshot_table(
        metadata,
        "mv_cycle_time_analytics",
        Column("node_id", Integer),
        Column("team_id", Integer),
        Column("period_start", DateTime, nullable=False),
        Column("period_end", DateTime, nullable=False),
        Column("token_count", Integer, nullable=False),
        Column("p50_minutes", Numeric(12, 2)),
        Column("p95_minutes", Numeric(12, 2)),
        Column("avg_minutes", Numeric(12, 2)),
    )
    if not erp_baseline:
        _snapshot_table(
            metadata,
            "mv_dashboard_trends",
            Column("period_date", Date, nullable=False),
            Column("production_type", String(20), nullable=False),
            Column("graph_id", Integer, nullable=False),
            Column("tokens_spawned", Integer, nullable=False),
            Column("tokens_completed", Integer, nullable=False),
            Column("avg_lead_time_hours", Numeric(12, 2)),
            Column("throughput_per_day", Numeric(12, 2)),
        )
        # node visits of the cycle-time window, kept up to date by its refresh
        Table(
            "bgw_node_visit",
            metadata,
            Column("exit_event_id", BigId, primary_key=True, autoincrement=False),
            Column("node_id", Integer, nullable=False),
            Column("team_id", Integer),  # the exiting operator's team when recorded
            Column("exited_at", DateTime, nullable=False),
            Column("seconds", Integer, nullable=False),
            Index("ix_bgw_node_visit_exited", "exited_at"),
            # each group's durations in order: percentiles without a sort
            Index("ix_bgw_node_visit_node", "node_id", "seconds"),
            Index("ix_bgw_node_visit_team", "team_id", "seconds"),
        )
    return metadata


metadata = define(MetaData())
t = metadata.tables
routing_graph, routing_node, team, team_member = (
    t["routing_graph"],
    t["routing_node"],
    t["team"],
    t["team_member"],
)
job_ticket, job_graph_instance, job_ticket_serial = (
    t["job_ticket"],
    t["job_graph_instance"],
    t["job_ticket_serial"],
)
flow_token, token_assignment, token_event = (
    t["flow_token"],
    t["token_assignment"],
    t["token_event"],
)
serial_link_outbox, serial_quarantine = t["serial_link_outbox"], t["serial_quarantine"]
mv_token_flow_summary, mv_node_bottlenecks, mv_team_workload = (
    t["mv_token_flow_summary"],
    t["mv_node_bottlenecks"],
    t["mv_team_workload"],
)
mv_cycle_time_analytics, mv_dashboard_trends = (
    t["mv_cycle_time_analytics"],
    t["mv_dashboard_trends"],
)
node_visit = t["bgw_node_visit"]
del t
