"""Helpers for tests of the runner and the daemon: tenants, settings, history, a server
to restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from helpers import DbUrls, write_settings

from bgworkers import dbadmin
from bgworkers.db import ensure_database
from bgworkers.jobs import REGISTRY
from bgworkers.schema import core, own
from bgworkers.settings import load_settings
from bgworkers.tenancy import Databases

HARNESS = Path(__file__).parent / "harness" / "mariadb.sh"


def tenant_setup(db_urls: DbUrls, config: Path, codes: list[str], erp_schema: bool = False) -> None:
    """Core schema, one active organization per code, and each tenant's database
    (empty unless erp_schema: heartbeat only needs it to answer)."""
    settings = load_settings(config)
    dbs = Databases(settings)
    try:
        dbadmin.init(settings, dbs, None, lambda _: None)
        with dbs.core.begin() as conn:
            conn.execute(core.organization.insert(), [
                {"id_org": i, "code": code, "name": code, "status": "active"}
                for i, code in enumerate(codes, start=1)])
        for code in codes:
            ensure_database(dbs.url(settings.tenant_url(code)), settings.database)
            with dbs.tenant(code).connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        if erp_schema:
            dbadmin.init(settings, dbs, None, lambda _: None)
    finally:
        dbs.dispose()


def heartbeat_settings(path: Path, db_urls: DbUrls, every: str = "1s", hold: str = "0s",
                       extra: str = "", max_workers: int = 8, lease_ttl: str = "3s") -> Path:
    """Settings scheduling only heartbeat (tenant databases may be empty)."""
    others = "".join(f"[jobs.{spec.name}]\nenabled = false\n" for spec in REGISTRY
                     if spec.name != "heartbeat" and f"[jobs.{spec.name}]" not in extra)
    return write_settings(path, db_urls, f"""{others}
[scheduler]
max_workers = {max_workers}
lease_ttl = "{lease_ttl}"
shutdown_grace = "10s"
[jobs.heartbeat]
enabled = true
every = "{every}"
hold = "{hold}"
{extra}""")


def runs(core_url: str) -> list[Any]:
    engine = sa.create_engine(core_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(own.run).order_by(own.run.c.id)))
    finally:
        engine.dispose()


class NotifyListener:
    """A test-side sd_notify receiver: what systemd is to a Type=notify service."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = "1", timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)
            if key in fields and (value is None or fields[key] == value):
                return fields
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@contextmanager
def daemon(config: Path, env: dict[str, str] | None = None,
           log: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """`bgworkers run` as a subprocess; killed if the test leaves it running."""
    out = open(log or config.with_suffix(".log"), "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "bgworkers", "run", "--config", str(config)],
                            stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        out.close()


def events(log: Path, name: str | None = None) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if name is None or entry.get("event") == name:
                found.append(entry)
    return found


@dataclass
class OwnServer:
    """A throwaway MariaDB (tests/harness/mariadb.sh) of one test, which the test may
    stop and start again: same port, same data, so the daemons' URLs stay valid."""

    base: Path
    port: str | None = None

    def _harness(self, *args: str) -> None:
        env = dict(os.environ, MARIADB_OWNER_PID=str(os.getpid()),
                   **({"MARIADB_PORT": self.port} if self.port else {}))
        done = subprocess.run(["bash", str(HARNESS), *args], capture_output=True, text=True,
                              timeout=120, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb.sh {args[0]} failed (rc={done.returncode}):\n"
                               f"{done.stderr}")

    @property
    def env(self) -> dict[str, str]:
        """The harness's variables: MARIADB_URL, MARIADB_PORT, MARIADB_PID, ..."""
        pairs = (line.split("=", 1) for line in (self.base / "env").read_text().split())
        return {key: value.strip("'") for key, value in pairs}

    @property
    def url(self) -> str:
        """`mysql+mysqldb://root@127.0.0.1:PORT`, no database."""
        return self.env["MARIADB_URL"]

    def start(self) -> None:
        self._harness("start", str(self.base))
        self.port = self.env["MARIADB_PORT"]

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, waited for); the data directory stays."""
        self._harness("stop", str(self.base), "--keep")
