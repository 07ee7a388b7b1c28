"""Pauses (bgw_pause), and the history indexes `bgworkers history` reads newest first by.

Revision ID: coord_0003
"""

from bgworkers.migrations import ops
from bgworkers.schema import own

revision = "coord_0003"
down_revision = "coord_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_table(own.pause)
    for name in ("ix_bgw_run_job_started", "ix_bgw_run_tenant_started"):
        ops.create_index(next(ix for ix in own.run.indexes if ix.name == name))
