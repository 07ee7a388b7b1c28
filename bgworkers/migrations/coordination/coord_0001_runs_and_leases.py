"""Run history (bgw_run) and leases (bgw_lease).

Revision ID: coord_0001
"""

from bgworkers.migrations import ops
from bgworkers.schema import own

revision = "coord_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_table(own.run)
    ops.create_table(own.lease)
