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
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
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
#: Keys naming the jobs or tenants an event concerns: each name becomes a JOB or TENANT
#: journal field (a field given several times when the event names several).
JOB_KEYS = ("job", "jobs")
TENANT_KEYS = ("tenant", "tenants")
#: Job names under other keys of some events (reload_applied: what the reload changed).
EVENT_JOB_KEYS = {"reload_applied": ("add", "remove", "reschedule", "modify")}
#: "job/tenant" pairs under a key of some events.
EVENT_PAIR_KEYS = {"shutdown_grace_exceeded": ("interrupted",)}
#: Console: shown first, in this order, after the event and its job/tenant.
CONSOLE_FIRST = ("status", "error", "reason", "ms")
#: Console: left out (journal and JSON keep them): repeated or long, of no use on a screen.
CONSOLE_HIDDEN = frozenset(
    {"run_id", "logger", "timestamp", "level", "event", "job", "tenant", "exception", "stack"}
)
CONSOLE_VALUE_CHARS = 48
_COLORS = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31;1m",
    "critical": "\x1b[31;1m",
}
_LEVEL_TAGS = {
    "debug": "debug",
    "info": "info ",
    "warning": "WARN ",
    "error": "ERROR",
    "critical": "CRIT ",
}


@dataclass
class _State:
    level: int = logging.INFO
    format: str = "json"
    stream: TextIO | None = None
    secrets: re.Pattern[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: socket.socket | None = None
    #: Console only (see `quiet_console`): a higher level and events left out.
    console_level: int = 0
    console_hidden: frozenset[str] = frozenset()


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
    _state.console_level, _state.console_hidden = 0, frozenset()
    _install()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ForwardHandler)]:
        root.removeHandler(handler)
    root.addHandler(_ForwardHandler())
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= 10 else max(level, 30))


def quiet_console(level: str = "warning", hidden: Iterable[str] = ()) -> bool:
    """On a terminal (console format) below debug: show only `level` and above, and never
    the `hidden` events (a command prints their content in its own summary).  Journal and
    JSON output are unchanged.  True when the console is quieted."""
    if _state.format != "console" or _state.level <= logging.DEBUG:
        return False
    _state.console_level, _state.console_hidden = LEVELS[level], frozenset(hidden)
    return True


def console_format() -> bool:
    """Whether events go to a terminal as console lines."""
    return _state.format == "console"


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


@contextlib.contextmanager
def still_running(
    log: FilteringBoundLogger, event: str, every: float = 5.0, **fields: Any
) -> Iterator[None]:
    """While the block runs, log `event` with the seconds elapsed every `every` seconds
    (nothing when it ends sooner): a long step is never silent.  `log` must carry its
    own context (job, tenant): the lines come from another thread."""
    done = threading.Event()
    started = time.monotonic()

    def tell() -> None:
        while not done.wait(every):
            log.info(event, elapsed_s=int(time.monotonic() - started), **fields)

    thread = threading.Thread(target=tell, name="still-running", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


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


def _names(value: Any) -> list[str]:
    """The names in a job or tenant key: a name, a list of names, or a dict keyed by name."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Mapping):
        value = list(value)
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str) and v]
    return []  # e.g. a count of tenants


def concerned(event_dict: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(jobs, tenants) an event names, each once, in order of appearance."""
    event = str(event_dict.get("event", ""))
    jobs = [
        n
        for k in (*JOB_KEYS, *EVENT_JOB_KEYS.get(event, ()))
        if k in event_dict
        for n in _names(event_dict[k])
    ]
    tenants = [n for k in TENANT_KEYS if k in event_dict for n in _names(event_dict[k])]
    for key in EVENT_PAIR_KEYS.get(event, ()):
        for pair in _names(event_dict.get(key)):
            job, _, tenant = pair.partition("/")
            jobs.append(job)
            tenants.extend([tenant] if tenant else [])
    return list(dict.fromkeys(jobs)), list(dict.fromkeys(tenants))


def journal_fields(event_dict: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Journal fields of a processed event: MESSAGE reads `event key=value ...`.

    JOB and TENANT name every job and tenant the event concerns, whatever key names
    them (`job`, `jobs`, `tenant`, `tenants`, ...): one field per name, so
    `journalctl JOB=x` finds an event about several jobs too."""
    rest = dict(event_dict)
    event, level = _text(rest.pop("event", "")), str(rest.pop("level", "info"))
    rest.pop("timestamp", None)
    exc, stack = rest.pop("exception", None), rest.pop("stack", None)
    pairs = [
        f"{k}={t if _BARE.fullmatch(t := _text(v)) else json.dumps(t)}" for k, v in rest.items()
    ]
    message = "\n".join(str(p) for p in (" ".join([event, *pairs]), stack, exc) if p)
    fields: dict[str, str | list[str]] = {
        "MESSAGE": message,
        "PRIORITY": str(PRIORITIES.get(level, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "EVENT": event,
    }
    jobs, tenants = concerned(event_dict)
    for name, names in (("JOB", jobs), ("TENANT", tenants)):
        if names:
            fields[name] = names[0] if len(names) == 1 else names
    for key, value in [*rest.items(), ("exception", exc), ("stack", stack)]:
        name = re.sub(r"[^A-Z0-9_]", "_", str(key).upper()).lstrip("_0123456789")[:64]
        if name and value is not None:
            fields.setdefault(name, _text(value))
    return fields


def encode_journal(fields: Mapping[str, str | list[str]]) -> bytes:
    """journald native protocol: NAME=value, or NAME\\n<u64 LE length>value when multi-line;
    a list value is the field given once per item."""
    out = bytearray()
    for name, values in fields.items():
        for value in [values] if isinstance(values, str) else values:
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


def _short_value(value: Any, limit: int = CONSOLE_VALUE_CHARS) -> str:
    if isinstance(value, Mapping):
        text = "{" + ",".join(f"{k}:{_short_value(v, limit)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ",".join(_short_value(v, limit) for v in value) + "]"
    elif isinstance(value, str):
        text = value.splitlines()[0] if value.strip() else json.dumps(value)
        text = text if _BARE.fullmatch(text) or not text else json.dumps(text, ensure_ascii=False)
    else:
        text = _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_console(event_dict: Mapping[str, Any], width: int = 100, colors: bool = False) -> str:
    """One terminal line: `HH:MM:SS LEVEL event job/tenant key=value ...`, at most `width`
    characters.  Important keys first; empty, zero and false values, run ids and
    tracebacks are left to the journal and JSON (the error's last line is kept)."""
    level = str(event_dict.get("level", "info"))
    stamp = str(event_dict.get("timestamp", ""))[11:19]
    where = "/".join(
        str(event_dict[k]) for k in ("job", "tenant") if isinstance(event_dict.get(k), str)
    )
    keys = [k for k in CONSOLE_FIRST if k in event_dict]
    keys += [k for k in event_dict if k not in CONSOLE_HIDDEN and k not in keys]
    pairs = [
        f"{k}={_short_value(v, width if k in CONSOLE_FIRST else CONSOLE_VALUE_CHARS)}"
        for k in keys
        if (v := event_dict[k]) not in (None, False, 0, "", [], {}) or k == "status"
    ]
    exc = event_dict.get("exception")
    if isinstance(exc, str) and exc.strip() and "error" not in event_dict:
        pairs.append(f"exception={_short_value(exc.strip().splitlines()[-1])}")
    head = [stamp, _LEVEL_TAGS.get(level, level[:5]), str(event_dict.get("event", ""))]
    line = " ".join(p for p in [*head, where, *pairs] if p)
    if len(line) > width:
        line = line[: width - 1] + "…"
    if not colors:
        return line
    tag_at = len(stamp) + 1
    tag_end = tag_at + len(head[1])
    return (
        f"\x1b[2m{line[:tag_at]}\x1b[0m{_COLORS.get(level, '')}{line[tag_at:tag_end]}"
        f"\x1b[0m\x1b[1m{line[tag_end : tag_end + 1 + len(head[2])]}\x1b[0m"
        f"{line[tag_end + 1 + len(head[2]) :]}"
    )


def _terminal(stream: TextIO) -> tuple[int, bool]:
    """(columns, colors) of the stream: COLUMNS or the terminal's size, else 100."""
    try:
        tty = stream.isatty()
    except (OSError, ValueError):
        tty = False
    columns = 0
    if os.environ.get("COLUMNS", "").isdigit():
        columns = int(os.environ["COLUMNS"])
    elif tty:
        with contextlib.suppress(OSError, ValueError):
            columns = os.get_terminal_size(stream.fileno()).columns
    columns = columns or shutil.get_terminal_size((100, 24)).columns
    return max(columns - 1, 40), tty and not os.environ.get("NO_COLOR")


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
        line = None
        if _state.format == "console":
            level = LEVELS.get(str(event_dict.get("level")), logging.INFO)
            if level < _state.console_level or event_dict.get("event") in _state.console_hidden:
                return
            width, colors = _terminal(stream)
            line = render_console(event_dict, width, colors)
            if _state.level <= logging.DEBUG and event_dict.get("exception"):
                line += "\n" + str(event_dict["exception"])  # the traceback, when debugging
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
