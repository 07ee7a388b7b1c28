"""Node visits recorded for the cycle-time dashboard (the project's own table).

Revision ID: tenant_0002
"""

from bgworkers.migrations import ops
from bgworkers.schema import tenant

revision = "tenant_0002"
down_revision = "tenant_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_table(tenant.node_visit)
