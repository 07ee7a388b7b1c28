"""Tenants from core `organization`, and one lazily created engine per database
(the databases of one server sharing one pool).

A tenant's identity is checked once, here, and used everywhere: `discover`
lists the tenants the daemon serves and refuses those that cannot be served
safely; `resolve` finds the one tenant an operator names on the command line,
by its exact code, among those same tenants.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bgworkers.db import DatabaseEngine, make_engine, server_url
from bgworkers.db.dialects import backend, is_sqlite, sqlite_file
from bgworkers.engine.logs import get_logger
from bgworkers.schema import core
from bgworkers.settings import Settings, tenant_code_problem

log = get_logger("bgworkers.tenancy")


@dataclass(frozen=True)
class Tenant:
    id: int
    code: str
    name: str
    serial_code: str | None


@dataclass(frozen=True)
class TenantProblem:
    """An organization that is active but cannot be served, and why.

    `code` is the organization's code, or `<id N>` when it has none (NULL or
    blank); `error` is one line naming the organization(s) involved.
    """

    code: str
    error: str
    id: int


class TenantError(Exception):
    """A tenant named by an operator cannot be used; str() is one line for the operator."""


def is_active(status: object) -> bool:
    return str(status).strip().lower() in ("active", "1")


@dataclass(frozen=True)
class _Org:
    id: int
    code: str | None  # None: NULL in organization.code
    name: str
    status: object
    serial_code: str | None

    @property
    def label(self) -> str:
        return f"{self.code!r} (organization id {self.id})"


def _text(value: object) -> str | None:
    """A code as text: a binary column may hand back bytes."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _organizations(core_engine: Engine) -> list[_Org]:
    """Every organization, in id order.  Codes are compared in Python, byte for byte:
    the column may have a case-insensitive collation on MySQL/MariaDB."""
    org = core.organization
    with core_engine.connect() as conn:
        rows = conn.execute(
            select(
                org.c.id_org, org.c.code, org.c.name, org.c.status, org.c.org_serial_code
            ).order_by(org.c.id_org)
        ).all()
    return [
        _Org(int(r.id_org), _text(r.code), str(r.name), r.status, _text(r.org_serial_code))
        for r in rows
    ]


def database_identity(url: URL) -> tuple[str, ...]:
    """What makes two URLs the same database: backend, host, port and database name;
    for SQLite the resolved file path."""
    kind, name = backend(url), url.database or ""
    if is_sqlite(url):
        file = sqlite_file(url)
        return (kind, name if file is None else str(Path(file).expanduser().resolve()))
    default_ports = {"mysql": "3306", "mariadb": "3306", "postgresql": "5432"}
    socket = url.query.get("unix_socket", "")
    return (
        kind,
        (url.host or "localhost").lower(),
        str(url.port) if url.port else default_ports.get(kind, ""),
        socket if isinstance(socket, str) else ",".join(socket),
        name,
    )


def _refusal(org: _Org) -> str | None:
    """Why an organization's own code cannot be a tenant code, if it cannot."""
    if org.code is None:
        return f"organization id {org.id} has no tenant code (NULL): refused"
    if not org.code.strip():
        return f"organization id {org.id} has a blank tenant code {org.code!r}: refused"
    problem = tenant_code_problem(org.code)
    return None if problem is None else f"{problem} (organization id {org.id})"


def _shown_code(org: _Org) -> str:
    return org.code if org.code and org.code.strip() else f"<id {org.id}>"


def discover(settings: Settings, core_engine: Engine) -> tuple[list[Tenant], list[TenantProblem]]:
    """The tenants the daemon serves, in id order, and the active organizations it refuses.

    A tenant is an active organization (`status` 'active' or 1) kept by
    `[tenants] include/exclude` (exact codes).  Refused, each with a
    TenantProblem naming the organization id: a NULL, empty or blank code; a
    code that is no tenant code (`tenant_code_problem`); and both (all) of any tenants whose
    codes are equal ignoring case (their leases and run history would be one:
    MariaDB compares them case-insensitively) or whose database URLs (override,
    else template) are the same database.  A `[tenants]` setting keyed by a code
    that matches an active organization only ignoring case (so it applies to
    nobody) logs `tenant_code_case_mismatch`, once per process.
    Raises SQLAlchemyError when core cannot be read.
    """
    orgs = _organizations(core_engine)
    return _classify(settings, orgs, str(core_engine.url))


def resolve(settings: Settings, core_engine: Engine, code: str) -> Tenant:
    """The tenant an operator named by `code`: exactly one the daemon serves.

    The match is exact, byte for byte, whatever the collation of
    organization.code; a case variant is never acted on.  The returned
    tenant's database is the daemon's: `settings.tenant_url(tenant.code)`
    ([tenants.urls] override first, else the template).  Raises TenantError
    (one line) when the code is invalid; when no organization has exactly this
    code (naming a case variant as "did you mean 'x'?"); when the organization
    is not active; when `[tenants] include/exclude` leaves it out; or when
    `discover` refuses it (e.g. it collides with another tenant).  Raises
    SQLAlchemyError when core cannot be read.
    """
    invalid = tenant_code_problem(code)
    if invalid is not None:
        raise TenantError(invalid)
    orgs = _organizations(core_engine)
    org = next((o for o in orgs if o.code == code), None)
    if org is None:
        variants = [o.code for o in orgs if o.code and o.code.lower() == code.lower()]
        hint = f"; did you mean {' or '.join(map(repr, variants))}?" if variants else ""
        raise TenantError(f"tenant {code}: not in core organization{hint}")
    if not is_active(org.status):
        raise TenantError(
            f"tenant {code}: organization id {org.id} is not active "
            f"(status {_text(org.status)!r}); only active tenants can be named"
        )
    tenants, problems = _classify(settings, orgs, str(core_engine.url))
    for tenant in tenants:
        if tenant.id == org.id:
            return tenant
    for problem in problems:
        if problem.id == org.id:
            raise TenantError(problem.error)
    raise TenantError(
        f"tenant {code}: not served with these settings (left out by [tenants] include/exclude)"
    )


def _classify(
    settings: Settings, orgs: Sequence[_Org], core_label: str
) -> tuple[list[Tenant], list[TenantProblem]]:
    include, exclude = set(settings.tenants.include), set(settings.tenants.exclude)
    active = [o for o in orgs if is_active(o.status)]
    _warn_case_mismatches(settings, active, core_label)
    problems: dict[int, TenantProblem] = {}
    candidates: list[_Org] = []
    for org in active:
        if org.code in exclude or (include and org.code not in include):
            continue
        why = _refusal(org)
        if why is not None:
            problems[org.id] = TenantProblem(_shown_code(org), why, org.id)
        else:
            candidates.append(org)
    clashes = _collisions(settings, candidates)
    tenants: list[Tenant] = []
    for org in candidates:
        assert org.code is not None
        if org.id in clashes:
            problems[org.id] = TenantProblem(org.code, clashes[org.id], org.id)
        else:
            tenants.append(Tenant(org.id, org.code, org.name, org.serial_code))
    return tenants, [problems[i] for i in sorted(problems)]


def _collisions(settings: Settings, orgs: Sequence[_Org]) -> dict[int, str]:
    """Per organization id, why it cannot be told apart from another tenant."""
    errors: dict[int, str] = {}
    shown: dict[int, str] = {}
    groups: dict[tuple[str, ...], list[_Org]] = {}
    for org in orgs:
        code = org.code or ""
        groups.setdefault(("code", code.lower()), []).append(org)
        try:
            url = make_url(settings.tenant_url(code))
        except ArgumentError as exc:
            errors[org.id] = f"tenant {org.label} refused: its database URL is invalid: {exc}"
            continue
        shown[org.id] = url.render_as_string(hide_password=True)
        groups.setdefault(("database", *database_identity(url)), []).append(org)
    reasons: dict[int, dict[int, list[str]]] = {}
    for (kind, *_), members in groups.items():
        for a in members:
            for b in members:
                if a.id != b.id:
                    why = (
                        "the same code ignoring case"
                        if kind == "code"
                        else f"the same database {shown[a.id]}"
                    )
                    reasons.setdefault(a.id, {}).setdefault(b.id, []).append(why)
    by_id = {o.id: o for o in orgs}
    for a_id, others in reasons.items():
        named = ", ".join(f"{by_id[b].label} ({' and '.join(why)})" for b, why in others.items())
        errors[a_id] = (
            f"tenant {by_id[a_id].label} refused: it collides with {named}; "
            "neither is served until one is renamed, deactivated or excluded"
        )
    return errors


_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()


def _warn_case_mismatches(settings: Settings, active: Sequence[_Org], core_label: str) -> None:
    """Log a `[tenants]` key that names an active organization only ignoring case."""
    codes = {o.code for o in active if o.code}
    by_lower: dict[str, list[str]] = {}
    for code in sorted(codes):
        by_lower.setdefault(code.lower(), []).append(code)
    keys = [("tenants.urls", k) for k in settings.tenants.urls]
    keys += [("tenants.include", k) for k in settings.tenants.include]
    keys += [("tenants.exclude", k) for k in settings.tenants.exclude]
    for setting, key in keys:
        matches = by_lower.get(key.lower())
        if key in codes or not matches:
            continue
        with _warned_lock:
            if (core_label, setting, key) in _warned:
                continue
            _warned.add((core_label, setting, key))
        log.warning(
            "tenant_code_case_mismatch",
            setting=setting,
            key=key,
            tenants=matches,
            detail=f"[{setting}] {key!r} applies to no tenant: codes match exactly "
            f"(did you mean {' or '.join(map(repr, matches))}?)",
        )


class Databases:
    """Engines by URL: created on first use, shared by threads, disposed together.

    Connections are bounded by work, not by tenants: the MySQL/MariaDB databases
    of one server (same driver, host, port, user, password, query) share one
    pool, each database an engine over it (`db.DatabaseEngine`) whose checkouts
    switch to its database.  The pool keeps `pool_size` idle connections and
    opens at most `server_connections` in all, enough for every worker to hold
    two at once.  SQLite files (no server limit) keep an engine each, but only
    the `sqlite_warm` most recently used keep their idle connection open, so a
    thousand tenant files do not hold three thousand file handles.
    """

    def __init__(self, settings: Settings, io_timeout: float | None = None) -> None:
        self.settings = settings
        self.io_timeout = io_timeout  # client read/write timeout of MySQL connections
        self._engines: dict[str, Engine] = {}
        self._servers: dict[str, Engine] = {}
        self._sqlite: OrderedDict[str, Engine] = OrderedDict()  # most recently used last
        workers = settings.scheduler.max_workers
        self.server_connections = max(
            settings.database.pool_size + settings.database.max_overflow, 2 * (workers + 2)
        )
        self.sqlite_warm = 2 * workers + 4
        self._lock = threading.Lock()

    def engine(self, raw_url: str) -> Engine:
        with self._lock:
            engine = self._engines.get(raw_url)
            if engine is None:
                engine = self._make(self.url(raw_url))
                self._engines[raw_url] = engine
            if is_sqlite(engine.url):
                self._sqlite[raw_url] = engine
                self._sqlite.move_to_end(raw_url)
                if len(self._sqlite) > self.sqlite_warm:
                    _, cold = self._sqlite.popitem(last=False)
                    cold.pool.dispose()  # closes its idle connection; it reopens on use
            return engine

    def _make(self, url: URL) -> Engine:
        server = server_url(url)
        if server is None:
            return make_engine(url, self.settings.database, self.io_timeout)
        key = server.render_as_string(hide_password=False)
        pool = self._servers.get(key)
        if pool is None:
            database = self.settings.database
            pool = make_engine(
                server,
                database,
                self.io_timeout,
                max_overflow=max(0, self.server_connections - database.pool_size),
            )
            self._servers[key] = pool
        return DatabaseEngine(pool, url)

    def url(self, raw_url: str) -> URL:
        return self.settings.database.url(raw_url)

    @property
    def core(self) -> Engine:
        return self.engine(self.settings.database.core_url)

    @property
    def coordination(self) -> Engine:
        return self.engine(
            self.settings.database.coordination_url or self.settings.database.core_url
        )

    def tenant(self, code: str) -> Engine:
        return self.engine(self.settings.tenant_url(code))

    def dispose(self) -> None:
        with self._lock:
            for engine in [*self._engines.values(), *self._servers.values()]:
                engine.dispose()  # a DatabaseEngine leaves its server's pool alone
            self._engines.clear()
            self._servers.clear()
            self._sqlite.clear()
