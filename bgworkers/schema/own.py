"""The project's own tables: run history, leases and pauses (coordination DB = core DB by
default)."""

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from bgworkers.db.types import BigId, PreciseDateTime

metadata = MetaData()

#: One row per (job, tenant, tick): the unique key is the claim that makes a tick run
#: at most once per tenant across replicas.  Times are UTC.
run = Table(
    "bgw_run",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("tenant", String(50), nullable=False),
    Column("tick_at", PreciseDateTime, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", PreciseDateTime, nullable=False),
    Column("ended_at", PreciseDateTime),
    # a history.RunStatus value
    Column("status", String(16), nullable=False),
    Column("counters", Text),  # JSON object
    Column("error", Text),
    UniqueConstraint("job", "tenant", "tick_at", name="uq_bgw_run_tick"),
    Index("ix_bgw_run_started", "started_at"),
    Index("ix_bgw_run_job_tenant_status", "job", "tenant", "status"),
    # `bgworkers history JOB` / `--tenant CODE`: newest first without a sort
    Index("ix_bgw_run_job_started", "job", "started_at"),
    Index("ix_bgw_run_tenant_started", "tenant", "started_at"),
    # closing a run (and marking it abandoned) finds its row by run_id
    Index("ix_bgw_run_run_id", "run_id"),
)

#: A (lease group, tenant) is held by at most one run; expires_at uses the DB clock.
lease = Table(
    "bgw_lease",
    metadata,
    Column("lease_group", String(64), primary_key=True),
    Column("tenant", String(50), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("token", String(36), nullable=False),
    Column("acquired_at", PreciseDateTime, nullable=False),
    Column("expires_at", PreciseDateTime, nullable=False),
)

#: A job paused by an operator (`bgworkers pause`), for one tenant or for all
#: (tenant ALL_TENANTS); every replica reads it before running a tick.  UTC.
pause = Table(
    "bgw_pause",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("tenant", String(50), primary_key=True),
    Column("paused_at", PreciseDateTime, nullable=False),
    Column("paused_by", String(255), nullable=False),
    Column("reason", String(500)),
)
#: `bgw_pause.tenant` of a pause for every tenant (no tenant code can be "*").
ALL_TENANTS = "*"
