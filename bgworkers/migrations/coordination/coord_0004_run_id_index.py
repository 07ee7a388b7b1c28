"""An index on bgw_run.run_id: closing a run finds its row without scanning the history
(and, on InnoDB, without locking every row it scans).

Revision ID: coord_0004
"""

from bgworkers.migrations import ops
from bgworkers.schema import own

revision = "coord_0004"
down_revision = "coord_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_index(next(ix for ix in own.run.indexes if ix.name == "ix_bgw_run_run_id"))
