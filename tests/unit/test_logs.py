"""bgworkers.engine.logs: formats, levels, context, redaction, stdlib forwarding, journald."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from bgworkers.engine import logs
from bgworkers.engine.logs import (
    bind_context,
    clear_context,
    configure_logging,
    encode_journal,
    get_logger,
    journal_fields,
    log_context,
    quiet_console,
    render_console,
    resolve_format,
)
from bgworkers.settings import LoggingSettings

PASSWORD = "Tr0ub4dor&3-p@ss.word"  # regex metacharacters on purpose


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    clear_context()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.reset_defaults()


def setup(level: str = "info", fmt: str = "json", secrets: tuple[str, ...] = ()) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level=level, format=fmt), secrets, stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def decode_journal(payload: bytes) -> dict[str, str]:
    """Reference decoder of the journald native protocol (what journald parses)."""
    fields: dict[str, str] = {}
    while payload:
        line, _, rest = payload.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            payload = rest
        else:
            name, (size,) = line, struct.unpack("<Q", rest[:8])
            value, end = rest[8 : 8 + size], rest[8 + size : 9 + size]
            assert end == b"\n"
            payload = rest[9 + size :]
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setattr(logs, "JOURNAL_SOCKET", path)
        yield sock


def receive(sock: socket.socket) -> dict[str, str]:
    data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
    if fds:  # too large for a datagram: a sealed memfd, as libsystemd does
        with open(fds[0], "rb") as memfd:
            memfd.seek(0)  # the sender's file description: its offset is at the end
            data = memfd.read()
    return decode_journal(data)


# ------------------------------------------------------------------ json, levels, context


def test_json_mode_writes_one_parseable_object_per_line() -> None:
    stream = setup()
    get_logger("bgworkers.test").info("run_finished", job="serial_outbox", sent=3, ok=True)
    [entry] = lines(stream)
    assert list(entry)[:3] == ["timestamp", "level", "event"]
    assert entry["event"] == "run_finished" and entry["level"] == "info"
    assert entry["job"] == "serial_outbox" and entry["sent"] == 3 and entry["ok"] is True
    assert entry["logger"] == "bgworkers.test"
    stamp = datetime.fromisoformat(entry["timestamp"])
    assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)


def test_level_filtering_follows_reconfiguration() -> None:
    log = get_logger("early")  # obtained before configuration, bound to a name
    stream = setup(level="warning")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [e["event"] for e in lines(stream)] == ["w", "e"]

    stream = io.StringIO()
    for _ in range(2):  # reload twice: same logger, new level, still one handler
        configure_logging(LoggingSettings(level="debug", format="json"), (), stream)
    log.debug("d")
    logging.getLogger("some.lib").info("from stdlib")
    assert [e["event"] for e in lines(stream)] == ["d", "from stdlib"]
    assert [e["level"] for e in lines(stream)] == ["debug", "info"]


def test_context_is_attached_to_every_event_and_restored() -> None:
    stream = setup()
    log = get_logger()
    with log_context(job="serial_outbox", tenant="DEFAULT", run_id="r1"):
        log.info("inside")
        logging.getLogger("sqlalchemy.engine").warning("stdlib inside")
    log.info("outside")
    bind_context(job="dashboard_fast")
    log.info("bound")
    clear_context()
    log.info("cleared")
    inside, stdlib, outside, bound, cleared = lines(stream)
    for entry in (inside, stdlib):
        assert (entry["job"], entry["tenant"], entry["run_id"]) == (
            "serial_outbox",
            "DEFAULT",
            "r1",
        )
    assert "job" not in outside and "job" not in cleared
    assert bound["job"] == "dashboard_fast"


def test_context_is_per_thread() -> None:
    stream = setup()
    started, done = threading.Event(), threading.Event()

    def worker() -> None:
        with log_context(tenant="T1"):
            started.set()
            done.wait(5)
            get_logger().info("worker")

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(5)
    get_logger().info("main")
    done.set()
    thread.join()
    by_event = {e["event"]: e for e in lines(stream)}
    assert by_event["worker"]["tenant"] == "T1"
    assert "tenant" not in by_event["main"]


# ------------------------------------------------------------------ redaction


def log_secrets_everywhere() -> None:
    log = get_logger("redaction")
    with log_context(dsn=f"mysql://app:{PASSWORD}@db/core"):
        log.info(
            f"connecting with {PASSWORD}",
            password=PASSWORD,
            nested={"list": [PASSWORD, 1], PASSWORD: "as a key"},
            error=ValueError(f"wrong password {PASSWORD}"),
        )
    try:
        raise RuntimeError(f"login failed for {PASSWORD}")
    except RuntimeError:
        log.exception("login_failed")
    logging.getLogger("sqlalchemy.pool").error("pool: %s", PASSWORD)
    # A record that cannot be formatted: stdlib's handleError would print its args to stderr.
    # Sent to our handler only, as pytest's own capture handler would fail the test.
    bad = logging.LogRecord(
        "sqlalchemy.pool", logging.ERROR, __file__, 1, "%s %s", (PASSWORD,), None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logs._ForwardHandler):
            handler.handle(bad)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_never_reach_the_stream(fmt: str) -> None:
    stream = setup(fmt=fmt, secrets=(PASSWORD, "", PASSWORD[:5]))
    log_secrets_everywhere()
    text = stream.getvalue()
    assert PASSWORD not in text and PASSWORD[:5] not in text
    assert text.count("***") >= (8 if fmt == "json" else 5)  # a terminal line is shortened
    assert "RuntimeError: login failed for ***" in text


def test_secrets_never_reach_the_journal(journal_socket: socket.socket) -> None:
    setup(fmt="journal", secrets=(PASSWORD,))
    log_secrets_everywhere()
    entries = [receive(journal_socket) for _ in range(4)]
    raw = json.dumps(entries)
    assert PASSWORD not in raw
    assert entries[0]["PASSWORD"] == "***"
    assert "RuntimeError: login failed for ***" in entries[1]["EXCEPTION"]
    assert entries[2]["MESSAGE"].startswith("pool: *** ")
    assert (entries[3]["EVENT"], entries[3]["ARGS"]) == ("bad_log_record", '["***"]')


def test_secrets_can_change_on_reload() -> None:
    stream = setup(secrets=("old-secret",))
    configure_logging(LoggingSettings(format="json"), ["new-secret"], stream)
    get_logger().info("x", a="old-secret", b="new-secret")
    [entry] = lines(stream)
    assert (entry["a"], entry["b"]) == ("old-secret", "***")


# ------------------------------------------------------------------ stdlib logging


def test_stdlib_records_go_through_the_same_pipeline() -> None:
    stream = setup(secrets=(PASSWORD,))
    logging.getLogger("sqlalchemy.engine").warning("slow query %s ms", 1234)
    logging.getLogger("apscheduler.scheduler").info("Added job")  # quiet below debug
    logging.getLogger("alembic.runtime").info("Running upgrade")
    logging.getLogger("alembic.runtime").warning("alembic warns")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("apscheduler.executors").exception("Job raised")
    slow, warns, raised = lines(stream)
    assert slow == {
        **slow,
        "event": "slow query 1234 ms",
        "level": "warning",
        "logger": "sqlalchemy.engine",
    }
    assert warns["event"] == "alembic warns"
    assert raised["level"] == "error" and "ZeroDivisionError" in raised["exception"]
    assert len(logging.getLogger().handlers) == len({id(h) for h in logging.getLogger().handlers})


def test_quiet_libraries_speak_at_debug() -> None:
    stream = setup(level="debug")
    logging.getLogger("apscheduler.scheduler").info("Added job")
    logging.getLogger("alembic.runtime").debug("details")
    assert [e["logger"] for e in lines(stream)] == ["apscheduler.scheduler", "alembic.runtime"]


# ------------------------------------------------------------------ journald


def test_encode_journal_uses_binary_form_for_newlines() -> None:
    payload = encode_journal({"MESSAGE": "line one\nline two", "JOB": "serial_outbox"})
    assert payload == (
        b"MESSAGE\n" + struct.pack("<Q", 17) + b"line one\nline two\n" + b"JOB=serial_outbox\n"
    )
    assert encode_journal({"EVENT": "caf\u00e9"}) == "EVENT=caf\u00e9\n".encode()


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True),
        st.text(st.characters(blacklist_categories=["Cs"])),
    )
)
def test_encode_journal_round_trips(fields: dict[str, str]) -> None:
    assert decode_journal(encode_journal(fields)) == fields


def test_journal_fields_map_event_to_journal_names() -> None:
    fields = journal_fields(
        {
            "event": "run_failed",
            "level": "error",
            "timestamp": "2025-01-01T00:00:00Z",
            "job": "serial_outbox",
            "run-id": "r 1",
            "_private": 1,
            "message": "clash",
            "exception": "Traceback...\nValueError: x",
        }
    )
    assert (
        fields["MESSAGE"] == 'run_failed job=serial_outbox run-id="r 1" _private=1 '
        "message=clash\nTraceback...\nValueError: x"
    )
    assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "bgworkers"
    assert fields["EVENT"] == "run_failed" and fields["JOB"] == "serial_outbox"
    assert fields["RUN_ID"] == "r 1" and fields["PRIVATE"] == "1"
    assert fields["EXCEPTION"] == "Traceback...\nValueError: x"
    assert "TIMESTAMP" not in fields and "LEVEL" not in fields
    assert {
        journal_fields({"event": "e", "level": lvl})["PRIORITY"]
        for lvl in ("debug", "info", "warning", "critical")
    } == {"7", "6", "4", "2"}


def test_journal_mode_sends_native_entries(journal_socket: socket.socket) -> None:
    setup(fmt="journal")
    log = get_logger()
    with log_context(job="serial_outbox", tenant="DEFAULT", run_id="r1"):
        log.warning("outbox_retry", attempt=2)
        log.info("huge", blob="x" * 1_000_000)  # beyond any datagram size: memfd
    entry, huge = receive(journal_socket), receive(journal_socket)
    event, *pairs = entry["MESSAGE"].split(" ")
    assert event == "outbox_retry"
    assert sorted(pairs) == ["attempt=2", "job=serial_outbox", "run_id=r1", "tenant=DEFAULT"]
    assert (entry["EVENT"], entry["PRIORITY"], entry["ATTEMPT"]) == ("outbox_retry", "4", "2")
    assert (entry["JOB"], entry["TENANT"], entry["RUN_ID"]) == ("serial_outbox", "DEFAULT", "r1")
    assert huge["BLOB"] == "x" * 1_000_000


def test_journal_mode_falls_back_to_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(tmp_path / "absent.sock"))
    stream = setup(fmt="journal")
    get_logger().error("no_journald", job="serial_outbox")
    [entry] = lines(stream)
    assert (entry["event"], entry["job"], entry["level"]) == (
        "no_journald",
        "serial_outbox",
        "error",
    )


def test_auto_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
    with (tmp_path / "err").open("w") as plain:
        assert resolve_format("auto", plain) == "json"
        st_ = os.fstat(plain.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino}")
        assert resolve_format("auto", plain) == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino + 1}")
        assert resolve_format("auto", plain) == "json"
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        assert resolve_format("auto", tty) == "console"
    os.close(leader)


# ------------------------------------------------------------------ journal: JOB and TENANT


def test_every_job_and_tenant_an_event_names_is_a_journal_field() -> None:
    def fields(**event: Any) -> dict[str, Any]:
        return dict(journal_fields({"level": "info", **event}))

    # outside log_context, as the runner and daemon log them
    assert fields(event="tenant_refused", job="serial_outbox", tenant="bad-code") | {} == {
        **fields(event="tenant_refused", job="serial_outbox", tenant="bad-code"),
        "JOB": "serial_outbox",
        "TENANT": "bad-code",
    }
    summary = fields(event="job_run_summary", job="dashboard_fast", tenants=3)
    assert summary["JOB"] == "dashboard_fast" and "TENANT" not in summary  # a count
    assert summary["TENANTS"] == "3"
    catch_up = fields(event="catch_up", job="serial_outbox", tenants=["DEFAULT", "maison"])
    assert catch_up["TENANT"] == ["DEFAULT", "maison"]
    started = fields(event="daemon_started", jobs={"serial_outbox": "x", "heartbeat": "y"})
    assert started["JOB"] == ["serial_outbox", "heartbeat"]
    reload = fields(
        event="reload_applied",
        add=["heartbeat"],
        remove=["dashboard_slow"],
        jobs={"heartbeat": "x"},
        settings_changed=["logging"],
    )
    assert reload["JOB"] == ["heartbeat", "dashboard_slow"]
    grace = fields(
        event="shutdown_grace_exceeded", interrupted=["serial_outbox/DEFAULT", "heartbeat/DEFAULT"]
    )
    assert (grace["JOB"], grace["TENANT"]) == (["serial_outbox", "heartbeat"], "DEFAULT")
    assert "JOB" not in fields(event="history_pruned", rows=3)
    payload = encode_journal({"JOB": ["a", "b"], "MESSAGE": "m"})
    assert payload == b"JOB=a\nJOB=b\nMESSAGE=m\n"  # a field given once per name


# ------------------------------------------------------------------ console


def test_console_lines_fit_the_terminal_with_the_important_fields_first() -> None:
    event = {
        "timestamp": "2026-12-05T17:56:39.682484Z",
        "level": "warning",
        "event": "job_tenant_result",
        "logger": "bgworkers.job",
        "job": "serial_consistency",
        "tenant": "maison_atelier",
        "run_id": "586f0ef2-ab3d-4920-8c16-ee67b884d940",
        "dry_run": False,
        "missing_tenant_links": 1,
        "bad_rows": 0,
        "quarantined": 12,
        "quarantined_by_reason": {f"reason_{n}": n for n in range(20)},
        "ms": 33,
        "status": "ok",
    }
    short = render_console(event, width=80)
    assert len(short) == 80 and short.endswith("…") and "\n" not in short
    line = render_console(event, width=160)
    assert len(line) <= 160
    assert line.startswith(
        "17:56:39 WARN  job_tenant_result serial_consistency/maison_atelier "
        "status=ok ms=33 missing_tenant_links=1 quarantined=12"
    )
    assert "run_id" not in line and "dry_run" not in line and "bad_rows" not in line
    colored = render_console(event, width=160, colors=True)
    assert re.sub("\x1b\\[[0-9;]*m", "", colored) == line
    failed = render_console(
        {
            "timestamp": "2026-12-05T17:56:39Z",
            "level": "error",
            "event": "run_failed",
            "job": "serial_outbox",
            "tenant": "DEFAULT",
            "error": "OperationalError: (1146, \"Table 'x.flow_token' doesn't exist\")",
            "exception": "Traceback (most recent call last):\n  ...\nsqlalchemy.exc...\n"
            "(Background on this error at: https://sqlalche.me/e/20/e3q8)",
        }
    )
    assert "1146" in failed and "Background" not in failed and "Traceback" not in failed


def test_console_is_one_line_per_event_and_can_be_quieted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "72")
    stream = setup(fmt="console")
    log = get_logger("bgworkers.job")
    with log_context(job="serial_consistency", tenant="DEFAULT", run_id="r" * 36):
        log.info("serial_consistency_changes", quarantined_by_reason={"x" * 30: 1, "y" * 30: 2})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("run_failed")
    assert quiet_console(hidden=["job_tenant_result"])
    log.info("job_tenant_result", job="heartbeat", checks=1)
    log.warning("job_tenant_result", job="heartbeat", checks=1)
    log.warning("alert_quarantine_spike", job="heartbeat", value=12)
    rows = stream.getvalue().splitlines()
    assert len(rows) == 3 and all(len(row) <= 71 for row in rows)
    assert "ValueError: boom" not in rows[1] or "Traceback" not in rows[1]
    assert rows[2].split()[1:3] == ["WARN", "alert_quarantine_spike"]
    stream = setup(fmt="json")
    assert not quiet_console()  # JSON and journal are never quieted


def test_a_long_step_says_it_is_still_running_and_a_short_one_says_nothing() -> None:
    import io
    import time

    from bgworkers.engine.logs import configure_logging, get_logger, still_running
    from bgworkers.settings import LoggingSettings

    buf = io.StringIO()
    configure_logging(LoggingSettings(format="json"), (), buf)
    log = get_logger("test").bind(job="dashboard_medium", tenant="DEFAULT")
    with still_running(log, "step_still_running", every=0.05, table="t"):
        time.sleep(0.18)
    with still_running(log, "quick_step", every=0.5):
        pass
    logs = [json.loads(line) for line in buf.getvalue().splitlines()]
    lines = [e for e in logs if e["event"] == "step_still_running"]
    assert 2 <= len(lines) <= 4, lines
    assert {(e["job"], e["tenant"], e["table"]) for e in lines} == {
        ("dashboard_medium", "DEFAULT", "t")
    }
    assert not [e for e in logs if e["event"] == "quick_step"]
