"""Outbox retry schedule, new quarantine reasons, the trends dashboard table.

Revision ID: tenant_0001
"""

from bgworkers.migrations import ops
from bgworkers.schema import tenant

revision = "tenant_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.add_column(tenant.serial_link_outbox, "next_attempt_at")
    ops.create_index(
        next(
            ix for ix in tenant.serial_link_outbox.indexes if ix.name == "ix_serial_link_outbox_due"
        )
    )
    ops.widen_enum(tenant.serial_quarantine, "reason")
    ops.create_table(tenant.mv_dashboard_trends)
