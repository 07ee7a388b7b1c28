"""heartbeat: prove every tenant database answers, under the tenant's lease.

Off by default. With `hold`, each run keeps its lease that long, checking it
every 100 ms: a way to watch leases, fail-over and overlap protection at work
(two replicas, a killed holder) without touching ERP data.
"""

from __future__ import annotations

import threading

from sqlalchemy import text

from bgworkers.engine.job import Counters, JobContext
from bgworkers.settings import HeartbeatSettings

COUNTERS = ("checks", "errors")


def run(ctx: JobContext[HeartbeatSettings]) -> Counters:
    with ctx.db.connect() as conn:
        conn.execute(text("SELECT 1"))
    waiter = threading.Event()
    remaining = ctx.job_settings.hold.total_seconds()
    while remaining > 0:
        ctx.check_lease()
        waiter.wait(min(0.1, remaining))
        remaining -= 0.1
    ctx.check_lease()
    return {"checks": 1}
