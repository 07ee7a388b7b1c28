"""Every column the dashboard refresh writes, on the ERP's dashboard tables of either shape.

The ERP's documents disagree on these tables: its migration (T27) has the
percentile columns but no names, its setup guide the names but no
`p50_minutes`/`p95_minutes`.  A refresh writes whole rows, so whatever column
of a dashboard table is missing is added here, NULL-able (existing snapshot
rows keep NULL).  `id` and `snapshot_at` are the ERP's: never added.

Revision ID: tenant_0003
"""

from bgworkers.migrations import ops
from bgworkers.schema import tenant

revision = "tenant_0003"
down_revision = "tenant_0002"
branch_labels = None
depends_on = None

DASHBOARDS = (
    tenant.mv_token_flow_summary,
    tenant.mv_node_bottlenecks,
    tenant.mv_team_workload,
    tenant.mv_cycle_time_analytics,
    tenant.mv_dashboard_trends,
)


def upgrade() -> None:
    for table in DASHBOARDS:
        ops.add_columns(
            table, [c.name for c in table.columns if c.name not in ("id", "snapshot_at")]
        )
