"""Daemon costs on the SQLite demo settings.

Prints: startup to READY=1 (median of 5 starts), idle RSS and CPU over 60 s
with the default jobs and no work due (no active tenant), and the cost of one
tick of a trivial job (heartbeat, one tenant) inside the daemon versus a fresh
`bgworkers run-once` process, the crontab way, as a ratio.

    .venv/bin/python bench/daemon.py [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bgworkers.demo.harness import NotifyListener, events

ROOT = Path(__file__).resolve().parents[1]
BGWORKERS = [sys.executable, "-m", "bgworkers"]


def settings_file(workdir: Path) -> Path:
    text = (ROOT / "settings.toml").read_text()
    text = text.replace("sqlite:///demo-data/", f"sqlite:///{workdir}/")
    text = text.replace('format = "auto"', 'format = "json"')
    path = workdir / "settings.toml"
    path.write_text(text)
    return path


def start(
    config: Path, listener: NotifyListener, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        [*BGWORKERS, "run", "--config", str(config)],
        text=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {}), "NOTIFY_SOCKET": listener.path},
    )
    listener.wait_for("READY", timeout=60)
    return proc, time.monotonic() - began


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bgw-bench-daemon-") as tmp:  # removed at the end
        measure(Path(tmp), args.idle_seconds)


def measure(work: Path, idle_seconds: float) -> None:
    config = settings_file(work)
    subprocess.run(
        [*BGWORKERS, "demo-data", "--config", str(config), "--reset"],
        check=True,
        capture_output=True,
    )
    listener = NotifyListener()
    try:
        times = []
        for _ in range(5):
            proc, ready = start(config, listener, work / "start.log")
            times.append(ready)
            stop(proc)
        print(
            f"startup to READY=1: median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, 5 starts)"
        )

        idle_dir = work / "idle"
        idle_dir.mkdir()
        idle = settings_file(idle_dir)
        subprocess.run(
            [*BGWORKERS, "db", "init", "--config", str(idle)], check=True, capture_output=True
        )
        proc, _ = start(idle, listener, idle_dir / "idle.log")
        time.sleep(2)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - t0 < idle_seconds:
            time.sleep(1)
            peak = max(peak, rss_mib(proc.pid))
        cpu = cpu_seconds(proc.pid) - cpu0
        elapsed = time.monotonic() - t0
        print(
            f"idle over {elapsed:.0f} s (default jobs, no tenant): RSS {rss_mib(proc.pid):.1f} "
            f"MiB (peak {peak:.1f}), CPU {cpu:.2f} s = {100 * cpu / elapsed:.2f} % of one core"
        )
        stop(proc)

        beat = {
            "BGWORKERS_JOBS__HEARTBEAT__ENABLED": "true",
            "BGWORKERS_JOBS__HEARTBEAT__EVERY": "1s",
            "BGWORKERS_TENANTS__INCLUDE": '["DEFAULT"]',
        }
        log = work / "beat.log"
        proc, _ = start(config, listener, log, beat)
        try:
            deadline = time.monotonic() + 60
            while len([e for e in events(log, "job_run_summary") if e["job"] == "heartbeat"]) < 21:
                assert time.monotonic() < deadline, "heartbeat ticks did not come"
                time.sleep(0.5)
        finally:
            stop(proc)
        in_daemon = [e["ms"] for e in events(log, "job_run_summary") if e["job"] == "heartbeat"][
            1:21
        ]
        fresh = []
        for _ in range(5):
            began = time.monotonic()
            subprocess.run(
                [*BGWORKERS, "run-once", "heartbeat", "--config", str(config)],
                check=True,
                capture_output=True,
                env={**os.environ, **beat},
            )
            fresh.append((time.monotonic() - began) * 1000)
        tick_ms, process_ms = statistics.median(in_daemon), statistics.median(fresh)
        print(
            f"one heartbeat tick (1 tenant): in the daemon median {tick_ms:.1f} ms "
            f"(20 ticks); fresh run-once process median {process_ms:.0f} ms (5 runs); "
            f"ratio {process_ms / max(tick_ms, 0.1):.0f}x"
        )
    finally:
        listener.close()


if __name__ == "__main__":
    main()
