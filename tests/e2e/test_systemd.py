"""deploy/systemd/bgworkers.service under a real systemd (tests/harness/systemd_sandbox.sh).

One sandbox per module: systemd is PID 1 of private namespaces over a read-only
overlay of /. The unit file is installed unchanged; /opt/bgworkers/venv is a
symlink to this checkout's .venv (bound read-only); the settings use SQLite
databases in the unit's StateDirectory filled by `bgworkers demo-data`, and only the
`heartbeat` job is enabled.
The tests share the one service and run in file order: start, jobs, reload,
broken reload, stop, watchdog.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import require

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "harness" / "systemd_sandbox.sh"
UNIT_FILE = REPO / "deploy" / "systemd" / "bgworkers.service"
UNIT = "bgworkers.service"
DROPINS = "/etc/systemd/system/bgworkers.service.d"
SETTINGS = "/etc/bgworkers/settings.toml"
STATE = "/var/lib/bgworkers"
BGW = "/opt/bgworkers/venv/bin/bgworkers"
TENANTS = {"DEFAULT", "maison_atelier"}  # the active organizations of the demo data
OTHER_JOBS = (
    "serial_consistency",
    "serial_outbox",
    "dashboard_fast",
    "dashboard_medium",
    "dashboard_slow",
)
GRACE_S = 30  # scheduler.shutdown_grace default
T = TypeVar("T")

# One sandbox for the module, its tests in file order: on one worker.
pytestmark = [pytest.mark.root, pytest.mark.xdist_group("systemd-sandbox")]

# systemd forgets a stopped unit's exit status when it unloads the unit; this logs it.
EXIT_DROPIN = (
    "[Service]\nExecStopPost=/bin/sh -c 'echo exit: $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS'\n"
)


def settings_toml(every: str, hold: str = "0s") -> str:
    text = (
        f'[database]\ncore_url = "sqlite:///{STATE}/core.db"\n'
        f'tenant_url = "sqlite:///{STATE}/tenant_{{code_lower}}.db"\n\n'
    )
    text += "".join(f"[jobs.{job}]\nenabled = false\n\n" for job in OTHER_JOBS)
    return text + f'[jobs.heartbeat]\nenabled = true\nevery = "{every}"\nhold = "{hold}"\n'


def paths_dropin() -> str | None:
    """Make this checkout and its venv's interpreter visible to the hardened unit.

    In production the venv lives in /opt; here the checkout or the base Python
    (e.g. pyenv under /root) may sit where ProtectHome=/PrivateTmp= hide them.
    """
    home = next(
        line.split("=", 1)[1].strip()
        for line in (REPO / ".venv" / "pyvenv.cfg").read_text().splitlines()
        if line.split("=", 1)[0].strip() == "home"
    )
    paths = [REPO, Path(home).resolve().parent]
    homes = [
        p
        for p in paths
        if p.is_relative_to("/home") or p.is_relative_to("/root") or p.is_relative_to("/run/user")
    ]
    hidden = homes + [p for p in paths if p.is_relative_to("/tmp") or p.is_relative_to("/var/tmp")]
    if not hidden:
        return None
    return (
        "[Service]\n"
        + ("ProtectHome=tmpfs\n" if homes else "")
        + "BindReadOnlyPaths="
        + " ".join(str(p) for p in hidden)
        + "\n"
    )


class Sandbox:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def run(
        self, *cmd: str, timeout: float = 30, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", str(HARNESS), "exec", str(self.dir), *cmd],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:  # log_tail() runs with check=False
            raise AssertionError(
                f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}"
                f"{proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def write(self, path: str, text: str) -> None:
        self.run(
            "sh", "-c", 'mkdir -p "${1%/*}" && cat >"$1" && chmod 644 "$1"', "_", path, stdin=text
        )

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "--timestamp=us+utc", "-p", ",".join(props), UNIT)
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, *matches: str, since_us: int = 0) -> list[dict[str, Any]]:
        out = self.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager", *matches).stdout
        entries = [json.loads(line) for line in out.splitlines()]
        return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) >= since_us]

    def log_tail(self) -> str:
        tail = ("journalctl", "-u", UNIT, "-n", "40", "--no-pager", "-o", "short-precise")
        return f"--- journal of {UNIT}:\n{self.run(*tail, check=False).stdout}"


def now_us() -> int:
    return time.time_ns() // 1000


def wait_for(what: str, sandbox: Sandbox, probe: Callable[[], T | None], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout}s: {what}\n{sandbox.log_tail()}")


def ticks(sandbox: Sandbox, since_us: int, pid: str) -> list[datetime]:
    """Scheduled times of the heartbeat runs the daemon *pid* finished since *since_us*."""
    entries = sandbox.journal(
        "EVENT=job_run_summary", "JOB=heartbeat", f"_PID={pid}", since_us=since_us
    )
    return sorted(datetime.fromisoformat(e["TICK"]) for e in entries)


def exits(sandbox: Sandbox, since_us: int) -> list[str]:
    """How the daemon ended, as logged by the ExecStopPost= of EXIT_DROPIN."""
    entries = sandbox.journal("SYSLOG_IDENTIFIER=bgworkers", since_us=since_us)
    return [e["MESSAGE"] for e in entries if str(e.get("MESSAGE", "")).startswith("exit: ")]


def spacing(stamps: list[datetime]) -> set[float]:
    return {(b - a).total_seconds() for a, b in itertools.pairwise(stamps)}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    require(os.geteuid() == 0, "needs root (namespaces, systemd as PID 1)")
    require(Path("/lib/systemd/systemd").exists(), "systemd missing (apt-get install systemd)")
    require("overlay" in Path("/proc/filesystems").read_text(), "needs overlayfs")
    require(
        all(shutil.which(t) for t in ("unshare", "nsenter", "setpriv")),
        "needs unshare, nsenter, setpriv (util-linux)",
    )
    require((REPO / ".venv" / "bin" / "bgworkers").exists(), "no .venv (make venv)")
    box = Sandbox(tmp_path_factory.mktemp("systemd"))
    env = {
        **os.environ,
        "SANDBOX_BIND": f"{REPO}:ro",
        "SANDBOX_MAX_LIFETIME": "600",
        "SANDBOX_BOOT_TIMEOUT": "60",
    }
    try:
        boot = subprocess.run(
            ["bash", str(HARNESS), "boot", str(box.dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert boot.returncode == 0, f"sandbox boot failed:\n{boot.stdout}{boot.stderr}"
        box.run(
            "sh",
            "-c",
            f"mkdir -p /opt/bgworkers {DROPINS} && ln -sfn {REPO}/.venv /opt/bgworkers/venv",
        )
        subprocess.run(
            [
                "bash",
                str(HARNESS),
                "put",
                str(box.dir),
                str(UNIT_FILE),
                f"/etc/systemd/system/{UNIT}",
            ],
            check=True,
            timeout=30,
        )
        dropin = paths_dropin()
        if dropin:
            box.write(f"{DROPINS}/50-test-paths.conf", dropin)
        box.write(f"{DROPINS}/55-test-exit.conf", EXIT_DROPIN)
        box.write(SETTINGS, settings_toml(every="1s"))
        # as root before the first start; systemd hands the directory to the service user
        box.run(BGW, "--config", SETTINGS, "demo-data", "--reset", timeout=120)
        box.run("systemctl", "daemon-reload")
        yield box
    finally:
        subprocess.run(
            ["bash", str(HARNESS), "shutdown", str(box.dir)],
            timeout=90,
            check=False,
            capture_output=True,
        )


def test_unit_verifies_cleanly_and_is_hardened(sandbox: Sandbox) -> None:
    verify = sandbox.run("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}", check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    # The unit as shipped, without the test's drop-ins, under another name.
    copy = "/run/systemd/system/bgworkers-as-shipped.service"
    sandbox.run("sh", "-c", f"cp /etc/systemd/system/{UNIT} {copy} && systemctl daemon-reload")
    report = sandbox.run("systemd-analyze", "security", "--no-pager", copy.rsplit("/", 1)[1])
    sandbox.run("sh", "-c", f"rm {copy} && systemctl daemon-reload")
    overall = report.stdout.strip().splitlines()[-1]
    assert "Overall exposure level" in overall, report.stdout
    assert float(overall.split(":")[1].split()[0]) <= 2.5, overall


def test_start_returns_once_ready(sandbox: Sandbox) -> None:
    sandbox.run("systemctl", "start", UNIT, timeout=90)
    props = sandbox.show(
        "ActiveState",
        "SubState",
        "MainPID",
        "StatusText",
        "ExecMainStartTimestamp",
        "ActiveEnterTimestamp",
    )
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert "jobs scheduled" in props["StatusText"]
    [started] = sandbox.journal("EVENT=daemon_started", f"_PID={props['MainPID']}")
    spawned = utc_us(props["ExecMainStartTimestamp"])
    active = utc_us(props["ActiveEnterTimestamp"])
    logged = int(started["_SOURCE_REALTIME_TIMESTAMP"])  # when the daemon sent it
    # READY=1 follows daemon_started: the unit became active only after the
    # process had scheduled its jobs, not when it was spawned.
    assert spawned < logged <= active, (spawned, logged, active)


def utc_us(stamp: str) -> int:
    """`Sun 2026-11-22 07:02:35.123456 UTC` (systemctl --timestamp=us+utc) in epoch µs."""
    parsed = datetime.strptime(
        stamp.split(" ", 1)[1].replace(" UTC", "+0000"), "%Y-%m-%d %H:%M:%S.%f%z"
    )
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def test_jobs_run_with_job_and_tenant_fields(sandbox: Sandbox) -> None:
    pid = sandbox.show("MainPID")["MainPID"]

    def results() -> list[dict[str, Any]]:
        found = sandbox.journal("EVENT=job_tenant_result", "JOB=heartbeat", f"_PID={pid}")
        return found if {e["TENANT"] for e in found} >= TENANTS else []

    entries = wait_for("heartbeat results for every tenant", sandbox, results)
    assert all(e["STATUS"] == "ok" and e["PRIORITY"] == "6" and e["RUN_ID"] for e in entries)
    one = sandbox.journal("JOB=heartbeat", "TENANT=maison_atelier", f"_PID={pid}")
    assert one and {e["TENANT"] for e in one} == {"maison_atelier"}  # the operator's filter works
    stamps = wait_for(
        "three heartbeat ticks", sandbox, lambda: (found := ticks(sandbox, 0, pid))[2:] and found
    )
    assert spacing(stamps) == {1.0}


def test_reload_changes_next_fire_time(sandbox: Sandbox) -> None:
    pid = sandbox.show("MainPID")["MainPID"]
    sandbox.write(SETTINGS, settings_toml(every="2s"))
    since = now_us()
    sandbox.run("systemctl", "reload", UNIT)
    [applied] = wait_for(
        "reload_applied", sandbox, lambda: sandbox.journal("EVENT=reload_applied", since_us=since)
    )
    assert "heartbeat" in json.loads(applied["RESCHEDULE"])
    fire = datetime.strptime(json.loads(applied["JOBS"])["heartbeat"], "%Y-%m-%d %H:%M:%S%z")
    assert fire.timestamp() % 2 == 0 and fire.timestamp() > since / 1e6 - 1
    stamps = wait_for(
        "three ticks on the new schedule",
        sandbox,
        lambda: (found := ticks(sandbox, since, pid))[3:] and found[1:],
    )
    assert spacing(stamps) == {2.0} and stamps[0] >= fire
    assert sandbox.show("MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}


def test_broken_settings_reload_keeps_old_schedule(sandbox: Sandbox) -> None:
    pid = sandbox.show("MainPID")["MainPID"]
    sandbox.write(SETTINGS, settings_toml(every="often"))
    since = now_us()
    sandbox.run("systemctl", "reload", UNIT)
    [failed] = wait_for(
        "reload_failed", sandbox, lambda: sandbox.journal("EVENT=reload_failed", since_us=since)
    )
    assert failed["PRIORITY"] == "3"
    assert "jobs.heartbeat.every" in failed["ERROR"] and "often" in failed["ERROR"]
    props = sandbox.show("ActiveState", "MainPID", "StatusText")
    assert (props["ActiveState"], props["MainPID"]) == ("active", pid)
    assert props["StatusText"].startswith("reload failed") and "often" in props["StatusText"]
    stamps = wait_for(
        "heartbeat going on after the failed reload",
        sandbox,
        lambda: (found := ticks(sandbox, since, pid))[3:] and found[1:],
    )
    assert spacing(stamps) == {2.0}  # still the 2 s schedule


def test_stop_drains_and_exits_cleanly_within_grace(sandbox: Sandbox) -> None:
    pid = sandbox.show("MainPID")["MainPID"]
    sandbox.write(SETTINGS, settings_toml(every="1s", hold="3s"))
    since = now_us()
    sandbox.run("systemctl", "reload", UNIT)
    wait_for(
        "reload_applied", sandbox, lambda: sandbox.journal("EVENT=reload_applied", since_us=since)
    )
    held = ("EVENT=job_run_summary", "JOB=heartbeat", f"_PID={pid}")
    # once a 3 s run has ended, the next one starts within a second: stop during it
    wait_for(
        "a run with the 3 s hold",
        sandbox,
        lambda: [e for e in sandbox.journal(*held, since_us=since) if int(e["MS"]) >= 3000],
    )
    time.sleep(1.5)
    stop_at, started = now_us(), time.monotonic()
    sandbox.run("systemctl", "stop", UNIT, timeout=90)
    elapsed = time.monotonic() - started
    assert sandbox.show("ActiveState")["ActiveState"] == "inactive"
    assert exits(sandbox, stop_at) == ["exit: success exited 0"]  # not killed: exit status 0
    assert elapsed < GRACE_S
    [stopping] = sandbox.journal("EVENT=daemon_stopping", f"_PID={pid}", since_us=stop_at)
    assert int(stopping["RUNNING"]) >= 1
    drained = sandbox.journal(
        "EVENT=job_tenant_result", f"_PID={pid}", since_us=int(stopping["__REALTIME_TIMESTAMP"])
    )
    assert drained and all(e["STATUS"] == "ok" for e in drained)
    assert sandbox.journal("EVENT=daemon_stopped", f"_PID={pid}", since_us=stop_at)


def test_watchdog_restarts_a_frozen_daemon(sandbox: Sandbox) -> None:
    sandbox.write(f"{DROPINS}/60-test-watchdog.conf", "[Service]\nWatchdogSec=3\n")
    sandbox.write(SETTINGS, settings_toml(every="1s"))
    sandbox.run("systemctl", "daemon-reload")
    sandbox.run("systemctl", "start", UNIT, timeout=90)
    before = sandbox.show("MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "3s"
    time.sleep(4.5)  # longer than WatchdogSec: the daemon's pings keep it alive
    assert sandbox.show("MainPID", "NRestarts", "WatchdogUSec") == before
    since = now_us()
    sandbox.run("kill", "-STOP", before["MainPID"])

    def restarted() -> dict[str, str] | None:
        now = sandbox.show("MainPID", "NRestarts", "ActiveState")
        fresh = now["MainPID"] not in ("0", before["MainPID"])
        later = int(now["NRestarts"]) > int(before["NRestarts"])
        return now if fresh and later and now["ActiveState"] == "active" else None

    wait_for("restart by the watchdog", sandbox, restarted, timeout=30)
    # killed with SIGABRT ("dumped" where core dumps are enabled)
    assert exits(sandbox, since) in (["exit: watchdog killed ABRT"], ["exit: watchdog dumped ABRT"])
    assert sandbox.journal("UNIT_RESULT=watchdog", since_us=since)  # "Failed with result ..."
