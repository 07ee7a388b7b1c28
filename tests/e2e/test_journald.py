"""Journal mode against a real systemd-journald (tests/harness/journald.sh).

The entries must be found by `journalctl JOB=serial_outbox`, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import require

HARNESS = Path(__file__).resolve().parents[1] / "harness" / "journald.sh"
JOURNALD = Path("/lib/systemd/systemd-journald")
SECRET = "s3cret-Pa55"

EMIT = f"""
import sys
from bgworkers.demo.harness import events
from bgworkers.engine.logs import configure_logging, get_logger, log_context
from bgworkers.settings import LoggingSettings

configure_logging(LoggingSettings(format=sys.argv[1]), secrets=[{SECRET!r}])
log = get_logger("e2e")
with log_context(job="serial_outbox", tenant="DEFAULT", run_id=sys.argv[2]):
    log.warning("outbox_retry", attempt=2, note="two\\nlines {SECRET}")
    try:
        raise ValueError("cannot reach {SECRET}")
    except ValueError:
        log.exception("outbox_failed")
    log.info("outbox_big", blob="x" * 1_000_000)
"""

# Inside the private namespace: r1 in explicit journal mode; r2 in auto mode with
# stderr on a journal stream and JOURNAL_STREAM set the way systemd sets it.
INSIDE = """
set -eu
"$PY" emit.py journal r1
systemd-cat -t bgworkers-stderr bash -c \
  'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$PY" emit.py auto r2'
journalctl --sync
journalctl --all --no-pager -o json JOB=serial_outbox
"""


@pytest.mark.root
def test_journal_entries_are_found_by_job(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root (mount namespace, journald)")
    require(JOURNALD.is_file(), f"{JOURNALD} missing (apt-get install systemd)")
    tools = ("unshare", "journalctl", "systemd-cat", "stat")
    require(all(shutil.which(t) for t in tools), f"needs {', '.join(tools)}")
    (tmp_path / "emit.py").write_text(EMIT)
    proc = subprocess.run(
        [str(HARNESS), "bash", "-c", INSIDE],
        cwd=tmp_path,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        entries[entry["RUN_ID"], entry["EVENT"]] = entry
    assert SECRET not in proc.stdout

    for run_id in ("r1", "r2"):
        retry = entries[run_id, "outbox_retry"]
        assert retry["JOB"] == "serial_outbox" and retry["TENANT"] == "DEFAULT"
        assert retry["PRIORITY"] == "4" and retry["SYSLOG_IDENTIFIER"] == "bgworkers"
        assert retry["ATTEMPT"] == "2" and retry["LOGGER"] == "e2e"
        assert retry["NOTE"] == "two\nlines ***"  # sent in the binary, length-prefixed form
        assert retry["MESSAGE"].startswith("outbox_retry ")
        assert "_TRANSPORT" in retry and retry["_TRANSPORT"] == "journal"

        failed = entries[run_id, "outbox_failed"]
        assert failed["PRIORITY"] == "3"
        assert failed["EXCEPTION"].endswith("ValueError: cannot reach ***")
        assert "Traceback (most recent call last)" in failed["MESSAGE"]

        big = entries[run_id, "outbox_big"]  # larger than a datagram: passed as a memfd
        assert big["BLOB"] == "x" * 1_000_000


DAEMON_EVENTS = """
from bgworkers.engine.logs import configure_logging, get_logger
from bgworkers.settings import LoggingSettings

configure_logging(LoggingSettings(format="journal"))
log = get_logger("bgworkers.daemon")  # daemon-level events: no log_context around them
log.warning("tick_missed", job="serial_outbox", tick="t", reason="late", tenants=2)
log.error("tenant_refused", job="serial_outbox", tenant="bad-code", error="refused")
log.warning("job_run_summary", job="serial_outbox", tenants=2, tenants_ok=2)
log.info("catch_up", job="dashboard_fast", tenants=["DEFAULT", "maison_atelier"])
log.info("reload_applied", add=["heartbeat"], remove=["serial_outbox"],
         settings_changed=["logging"], jobs={"heartbeat": "x", "dashboard_fast": "y"})
log.warning("shutdown_grace_exceeded", interrupted=["serial_outbox/maison_atelier"])
log.info("history_pruned", rows=3)
"""

QUERIES = """
set -eu
"$PY" daemon_events.py
journalctl --sync
for match in JOB=serial_outbox TENANT=maison_atelier; do
  echo "== $match"
  journalctl --all --no-pager -o json SYSLOG_IDENTIFIER=bgworkers "$match"
done
"""


@pytest.mark.root
def test_daemon_events_are_found_by_job_and_tenant(tmp_path: Path) -> None:
    """Events logged with job/tenant keys outside a run (or naming several) are found by
    `journalctl JOB=` and `TENANT=`, each name a field of its own."""
    require(os.geteuid() == 0, "needs root (mount namespace, journald)")
    require(JOURNALD.is_file(), f"{JOURNALD} missing (apt-get install systemd)")
    require(all(shutil.which(t) for t in ("unshare", "journalctl")), "needs unshare, journalctl")
    (tmp_path / "daemon_events.py").write_text(DAEMON_EVENTS)
    proc = subprocess.run(
        [str(HARNESS), "bash", "-c", QUERIES],
        cwd=tmp_path,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("== "):
            match = found.setdefault(line[3:], {})
        else:
            entry = json.loads(line)
            match[entry["EVENT"]] = entry
    assert sorted(found["JOB=serial_outbox"]) == [
        "job_run_summary",
        "reload_applied",
        "shutdown_grace_exceeded",
        "tenant_refused",
        "tick_missed",
    ]
    assert sorted(found["TENANT=maison_atelier"]) == ["catch_up", "shutdown_grace_exceeded"]
    reload = found["JOB=serial_outbox"]["reload_applied"]
    assert sorted(reload["JOB"]) == ["dashboard_fast", "heartbeat", "serial_outbox"]
    refused = found["JOB=serial_outbox"]["tenant_refused"]
    assert (refused["TENANT"], refused["PRIORITY"]) == ("bad-code", "3")
    assert found["TENANT=maison_atelier"]["catch_up"]["TENANT"] == ["DEFAULT", "maison_atelier"]
