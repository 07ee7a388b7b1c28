"""What the test suite and the benchmarks share: throwaway MariaDB servers, an sd_notify
receiver, the daemon's JSON log events and a job context for calling a job directly.

The servers are started by tests/harness/mariadb.sh, so this needs a source checkout;
nothing the daemon or the command line runs imports it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bgworkers.engine.clock import FixedClock
from bgworkers.engine.job import JobContext
from bgworkers.engine.logs import get_logger
from bgworkers.engine.tenancy import Databases, discover
from bgworkers.jobs import BY_NAME
from bgworkers.settings import Settings

MARIADB_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "harness" / "mariadb.sh"
START_TIMEOUT = 120.0  # seconds: mariadb-install-db and a first start on a slow machine
STOP_TIMEOUT = 60.0


class MariaDBError(RuntimeError):
    """The server could not be started or stopped; the message has the script's output."""


class MariaDB:
    """A throwaway MariaDB server (tests/harness/mariadb.sh) in its own directory `base`.

    `start` again after `stop` reuses the data and the port, so URLs stay valid across a
    restart; `remove` stops it and deletes the directory.  With an `owner_pid`, the
    script's watcher removes the server when that process dies without doing so.
    """

    def __init__(
        self, base: Path | None = None, owner_pid: int | None = None, prefix: str = "bgw-"
    ) -> None:
        # A short path under /tmp: the unix socket's path must stay under ~100 bytes.
        self.base = base or Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.owner_pid = owner_pid
        self.port: str | None = None

    def _script(self, *args: str, timeout: float) -> str:
        if not MARIADB_SCRIPT.is_file():
            raise MariaDBError(f"{MARIADB_SCRIPT} missing: a source checkout is needed")
        env = dict(os.environ)
        if self.owner_pid is not None:
            env["MARIADB_OWNER_PID"] = str(self.owner_pid)
        if self.port is not None:
            env["MARIADB_PORT"] = self.port
        try:
            done = subprocess.run(
                ["bash", str(MARIADB_SCRIPT), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise MariaDBError(
                f"mariadb.sh {args[0]} did not finish within {timeout:g} s "
                f"(left in {self.base}): {exc.stderr!r}"
            ) from exc
        if done.returncode != 0:
            raise MariaDBError(
                f"mariadb.sh {args[0]} failed (rc={done.returncode}):\n{done.stderr}"
            )
        return done.stdout

    @property
    def env(self) -> dict[str, str]:
        """The script's variables: MARIADB_URL, MARIADB_PORT, MARIADB_PID, ..."""
        pairs = (line.split("=", 1) for line in (self.base / "env").read_text().split())
        return {key: value.strip("'") for key, value in pairs}

    @property
    def url(self) -> str:
        """`mysql+mysqldb://root@127.0.0.1:PORT`, no database."""
        return self.env["MARIADB_URL"]

    @property
    def pid(self) -> int:
        """The process id of mariadbd."""
        return int(self.env["MARIADB_PID"])

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start (or start again) and return the server URL."""
        try:
            self._script("start", str(self.base), timeout=timeout)
        except MariaDBError:
            self._script("stop", str(self.base), "--keep", timeout=STOP_TIMEOUT)
            raise
        self.port = self.env["MARIADB_PORT"]
        return self.url

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, waited for); the data directory stays."""
        self._script("stop", str(self.base), "--keep", timeout=STOP_TIMEOUT)

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        self._script("stop", str(self.base), timeout=STOP_TIMEOUT)


@contextmanager
def mariadb_server(url: str | None = None) -> Iterator[str]:
    """The server URL (no database): `url` itself when given, else a throwaway server
    started for the block and removed after it (also when this process is killed)."""
    if url:
        yield url.rstrip("/")
        return
    server = MariaDB(owner_pid=os.getpid())
    try:
        yield server.start()
    finally:
        server.remove()


class NotifyListener:
    """A sd_notify receiver: what systemd is to a Type=notify service."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = "1", timeout: float = 15.0) -> dict[str, str]:
        """The first message (from now on) with `key`, equal to `value` unless that is None."""
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


def events(log: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's output file, only the events `name` if given."""
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if name is None or entry.get("event") == name:
                found.append(entry)
    return found


def make_context(
    settings: Settings,
    dbs: Databases,
    tenant_code: str,
    now: datetime,
    job: str,
    dry_run: bool = False,
) -> JobContext[Any]:
    """A context for calling a job's `run` for one active tenant at a fixed aware time."""
    tenants, _ = discover(settings, dbs.core)
    tenant = next((t for t in tenants if t.code == tenant_code), None)
    if tenant is None:
        raise LookupError(f"{tenant_code!r} is not an active tenant in core organization")
    return BY_NAME[job].context(settings, tenant, dbs, FixedClock(now), get_logger(), dry_run)
