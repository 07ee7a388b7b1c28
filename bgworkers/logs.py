"""Logging: structlog events to journald (native protocol), a console or JSON lines.

One fixed structlog chain reads `_state`, so after `configure_logging` runs again (SIGHUP)
every logger, even one bound earlier, follows the new level, format and secrets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from bgworkers.settings import LoggingSettings

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "bgworkers"
QUIET_LOGGERS = ("apscheduler", "alembic")  # WARNING unless the level is debug
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_METHOD_LEVELS = {**LEVELS, "warn": 30, "exception": 40, "fatal": 50}
_BARE = re.compile(r"[^\s=\"']+")
_CONSOLE = structlog.dev.ConsoleRenderer(colors=True)


@dataclass
class _State:
    level: int = logging.INFO
    format: str = "json"
    stream: TextIO | None = None
    secrets: re.Pattern[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: socket.socket | None = None


_state = _State()


def configure_logging(
    settings: LoggingSettings, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Set level, format and redacted secrets; safe to call again on reload."""
    out = stream or sys.stderr
    level = LEVELS[settings.level]
    words = sorted({s for s in secrets if s}, key=len, reverse=True)
    _state.level, _state.stream, _state.format = level, stream, resolve_format(settings.format, out)
    _state.secrets = re.compile("|".join(map(re.escape, words))) if words else None
    _install()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ForwardHandler)]:
        root.removeHandler(handler)
    root.addHandler(_ForwardHandler())
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= 10 else max(level, 30))


def resolve_format(fmt: str, stream: TextIO) -> str:
    """'auto' -> journal if JOURNAL_STREAM names *stream*, else console on a TTY, else json."""
    if fmt != "auto":
        return fmt
    try:
        st = os.fstat(stream.fileno())
        if os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}":
            return "journal"
        return "console" if stream.isatty() else "json"
    except (OSError, ValueError):  # no real file descriptor (e.g. StringIO)
        return "json"


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A logger on the fixed chain: it follows every later `configure_logging`."""
    if structlog.get_config()["processors"] is not _CHAIN:
        _install()
    logger = cast(FilteringBoundLogger, structlog.get_logger())
    return logger.bind(logger=name) if name else logger


def _install() -> None:
    structlog.configure(
        processors=_CHAIN,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=lambda *_: _SINK,
        cache_logger_on_first_use=False,
    )


# Keys bound here (job=, tenant=, run_id=) go on every event of this thread or task.
# Pool threads are reused: prefer `with log_context(...)`, which restores on exit.
bind_context = bind_contextvars
clear_context = clear_contextvars
log_context = bound_contextvars


def _filter(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    if _METHOD_LEVELS.get(method, logging.INFO) < _state.level:
        raise structlog.DropEvent
    return event_dict


def _clean(value: Any, secrets: re.Pattern[str] | None) -> Any:
    """Make *value* plain data (str/number/bool/None/list/dict) with secrets masked."""
    if isinstance(value, str):
        return secrets.sub("***", value) if secrets else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {_clean(str(k), secrets): _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, secrets) for v in value]
    if isinstance(value, BaseException):
        return _clean(f"{type(value).__name__}: {value}", secrets)
    return _clean(str(value), secrets)


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return cast(EventDict, _clean(event_dict, _state.secrets))


def _to_sink(_: WrappedLogger, __: str, event_dict: EventDict) -> tuple[tuple[Any], dict[str, Any]]:
    return (event_dict,), {}  # the sink gets the dict itself and renders per format


_CHAIN: list[Any] = [
    _filter,
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
    _redact,
    _to_sink,
]


def render_json(event_dict: Mapping[str, Any]) -> str:
    head = {k: event_dict[k] for k in ("timestamp", "level", "event") if k in event_dict}
    return json.dumps({**head, **event_dict}, ensure_ascii=False, default=str)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def journal_fields(event_dict: Mapping[str, Any]) -> dict[str, str]:
    """Journal fields of a processed event: MESSAGE reads `event key=value ...`."""
    rest = dict(event_dict)
    event, level = _text(rest.pop("event", "")), str(rest.pop("level", "info"))
    rest.pop("timestamp", None)
    exc, stack = rest.pop("exception", None), rest.pop("stack", None)
    pairs = [
        f"{k}={t if _BARE.fullmatch(t := _text(v)) else json.dumps(t)}" for k, v in rest.items()
    ]
    message = "\n".join(str(p) for p in (" ".join([event, *pairs]), stack, exc) if p)
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(PRIORITIES.get(level, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "EVENT": event,
    }
    for key, value in [*rest.items(), ("exception", exc), ("stack", stack)]:
        name = re.sub(r"[^A-Z0-9_]", "_", str(key).upper()).lstrip("_0123456789")[:64]
        if name and value is not None:
            fields.setdefault(name, _text(value))
    return fields


def encode_journal(fields: Mapping[str, str]) -> bytes:
    """journald native protocol: NAME=value, or NAME\\n<u64 LE length>value when multi-line."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def send_journal(payload: bytes) -> None:
    """One datagram; too large for that, a sealed memfd passed over the socket (as libsystemd)."""
    path = JOURNAL_SOCKET
    if _state.sock is None:
        _state.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        _state.sock.sendto(payload, path)
        return
    except OSError as exc:
        if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
            raise
    fd = os.memfd_create("bgworkers-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(fd, "wb", closefd=False) as memfile:
            memfile.write(payload)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        _state.sock.sendmsg([], rights, 0, path)  # (socket.send_fds drops the address)
    finally:
        os.close(fd)


class _Sink:
    """The structlog 'logger': receives the processed event dict and writes it out."""

    def msg(self, event_dict: dict[str, Any]) -> None:
        stream = _state.stream or sys.stderr
        if _state.format == "journal":
            try:
                send_journal(encode_journal(journal_fields(event_dict)))
                return
            except OSError:
                pass  # no journald: fall back to the JSON line
        line = _CONSOLE(None, "", event_dict) if _state.format == "console" else None
        with _state.lock, contextlib.suppress(OSError, ValueError):
            stream.write((line or render_json(event_dict)) + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = fatal = exception = msg


_SINK = _Sink()


class _ForwardHandler(logging.Handler):
    """Root-logger handler: stdlib records (APScheduler, SQLAlchemy...) into structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kw: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0]:
                kw["exc_info"] = record.exc_info
            if record.stack_info:
                kw["stack"] = record.stack_info
            level = min(max(record.levelno // 10 * 10, logging.DEBUG), logging.CRITICAL)
            get_logger().log(level, record.getMessage(), **kw)
        except Exception:  # e.g. bad %-args: say so through the redacting chain, not stderr
            with contextlib.suppress(Exception):
                get_logger().error(
                    "bad_log_record", logger=record.name, msg=str(record.msg), args=record.args
                )
