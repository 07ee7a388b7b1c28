"""Helpers for tests of the runner and the daemon: settings, history, the daemon as a
process (its sd_notify receiver and log events are in bgworkers.demo.harness)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from helpers import DbUrls, write_settings

from bgworkers.jobs import REGISTRY
from bgworkers.schema import own


def heartbeat_settings(
    path: Path,
    db_urls: DbUrls,
    every: str = "1s",
    hold: str = "0s",
    extra: str = "",
    max_workers: int = 8,
    lease_ttl: str = "3s",
) -> Path:
    """Settings scheduling only heartbeat (tenant databases may be empty)."""
    others = "".join(
        f"[jobs.{spec.name}]\nenabled = false\n"
        for spec in REGISTRY
        if spec.name != "heartbeat" and f"[jobs.{spec.name}]" not in extra
    )
    return write_settings(
        path,
        db_urls,
        f"""{others}
[scheduler]
max_workers = {max_workers}
lease_ttl = "{lease_ttl}"
shutdown_grace = "10s"
[jobs.heartbeat]
enabled = true
every = "{every}"
hold = "{hold}"
{extra}""",
    )


def runs(core_url: str) -> list[Any]:
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(own.run).order_by(own.run.c.id)))
    finally:
        engine.dispose()


@contextmanager
def daemon(
    config: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`bgworkers run` as a subprocess; killed if the test leaves it running."""
    out = open(log or config.with_suffix(".log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgworkers", "run", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        out.close()
