"""What each table the jobs use must have, and who provides it.

Per column there are three kinds:

- **required**: the ERP provides it (its own migrations made the table); the jobs
  cannot work without it and this project never adds it.  `db check` names the
  ERP migration that provides it.
- **added**: this project's migrations add it when it is missing (additive,
  NULL-able); `db upgrade` brings it.  Every column of a table that is not
  required is of this kind; the migrations in `bgworkers/migrations` add them.
- A column of the real table that is listed nowhere here is the ERP's own
  business: never read, written, dropped or changed.

`problems` is the run-time side: when a statement fails, it tells which table
or column of the database is missing and which command provides it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, inspect

from bgworkers.schema import core, own, tenant

UPGRADE = "run `bgworkers db upgrade`"
SERIALS = "the ERP's serial number migrations"
PRODUCTION = "the ERP's production (DAG token) migrations"
DASHBOARD = 'the ERP\'s migration "production dashboard"'
CORE = "the ERP's platform (core) migrations"


@dataclass(frozen=True)
class Need:
    table: Table
    #: columns the ERP must provide; None: the table is this project's (created by
    #: `db upgrade` when absent, every column added when missing)
    required: tuple[str, ...] | None
    provider: str = ""  # the ERP migration that makes the table
    #: an ERP table that may be absent: `db upgrade` then creates it (required columns
    #: are required of a table the install made itself)
    created_when_absent: bool = False

    @property
    def name(self) -> str:
        return self.table.name

    def fix(self, column: str | None = None) -> str:
        """What provides the table (column None) or one of its columns."""
        if self.required is None or (column is not None and column not in self.required):
            return UPGRADE
        if column is None and self.created_when_absent:
            return UPGRADE
        return f"the ERP must provide this: run {self.provider}"


def _erp(table: Table, provider: str) -> Need:
    """An ERP table whose every column is required, but those the migrations add."""
    added = {"next_attempt_at"}
    return Need(table, tuple(c.name for c in table.columns if c.name not in added), provider)


def _dashboard(table: Table) -> Need:
    """A dashboard table: the ERP's, in one of two documented shapes.  Its id and
    snapshot_at are required; every other column is added when missing."""
    return Need(table, ("id", "snapshot_at"), DASHBOARD)


CORE_NEEDS = (
    _erp(core.organization, CORE),
    _erp(core.serial_registry, SERIALS),
)
OWN_NEEDS = (Need(own.run, None), Need(own.lease, None))
TENANT_NEEDS = (
    *(
        _erp(t, PRODUCTION)
        for t in (
            tenant.routing_graph,
            tenant.routing_node,
            tenant.team,
            tenant.team_member,
            tenant.job_ticket,
            tenant.job_graph_instance,
            tenant.flow_token,
            tenant.token_assignment,
            tenant.token_event,
        )
    ),
    *(
        _erp(t, SERIALS)
        for t in (tenant.job_ticket_serial, tenant.serial_link_outbox, tenant.serial_quarantine)
    ),
    *(
        _dashboard(t)
        for t in (
            tenant.mv_token_flow_summary,
            tenant.mv_node_bottlenecks,
            tenant.mv_team_workload,
            tenant.mv_cycle_time_analytics,
        )
    ),
    # no documented DDL: created when absent; an install's own table is used as it is
    Need(tenant.mv_dashboard_trends, ("id", "snapshot_at"), DASHBOARD, created_when_absent=True),
    Need(tenant.node_visit, None),
)
BY_NAME = {need.name: need for need in (*CORE_NEEDS, *OWN_NEEDS, *TENANT_NEEDS)}


def missing_required(bind: Engine | Connection, needs: Iterable[Need]) -> list[str]:
    """What the ERP must provide and this database lacks: 'table X' / 'column X.y'."""
    insp = inspect(bind)
    present = set(insp.get_table_names())
    out = []
    for need in needs:
        if need.required is None:
            continue
        if need.name not in present:
            if not need.created_when_absent:
                out.append(f"table {need.name}")
            continue
        have = {c["name"] for c in insp.get_columns(need.name)}
        out += [f"column {need.name}.{c}" for c in need.required if c not in have]
    return out


def problems(bind: Engine | Connection, tables: Iterable[Table]) -> list[str]:
    """Every table or column of `tables` this database lacks, each with its fix:
    "table mv_x has no column p50_minutes; run `bgworkers db upgrade`"."""
    insp = inspect(bind)
    present = set(insp.get_table_names())
    out = []
    for table in dict.fromkeys(tables):
        need = BY_NAME.get(table.name, Need(table, None))
        if table.name not in present:
            out.append(f"table {table.name} is missing; {need.fix()}")
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        out += [
            f"table {table.name} has no column {c.name}; {need.fix(c.name)}"
            for c in table.columns
            if c.name not in have
        ]
    return out


def describe(engine: Engine, label: str) -> str:
    """'tenant DEFAULT database bgerp_t_default' (the database name, never the URL)."""
    return f"{label} database {engine.url.database or '(default)'}"
