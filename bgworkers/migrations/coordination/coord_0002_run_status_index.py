"""Index for `bgworkers status`: the latest run per (job, tenant, status).

Revision ID: coord_0002
"""

from bgworkers.migrations import ops
from bgworkers.schema import own

revision = "coord_0002"
down_revision = "coord_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_index(
        next(ix for ix in own.run.indexes if ix.name == "ix_bgw_run_job_tenant_status")
    )
