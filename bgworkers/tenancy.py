"""Tenants from core `organization`, and one lazily created engine per database."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from bgworkers.db import make_engine
from bgworkers.schema import core
from bgworkers.settings import TENANT_CODE_RE, Settings


@dataclass(frozen=True)
class Tenant:
    id: int
    code: str
    name: str
    serial_code: str | None


@dataclass(frozen=True)
class TenantProblem:
    """An organization that is active but cannot be served (e.g. a code unsafe for DB names)."""

    code: str
    error: str


def is_active(status: object) -> bool:
    return str(status).strip().lower() in ("active", "1")


def discover(settings: Settings, core_engine: Engine) -> tuple[list[Tenant], list[TenantProblem]]:
    """Active tenants after include/exclude filters, in id order, plus refused ones."""
    org = core.organization
    with core_engine.connect() as conn:
        rows = conn.execute(
            select(org.c.id_org, org.c.code, org.c.name, org.c.status, org.c.org_serial_code)
            .order_by(org.c.id_org)
        ).all()
    include, exclude = set(settings.tenants.include), set(settings.tenants.exclude)
    tenants: list[Tenant] = []
    problems: list[TenantProblem] = []
    for row in rows:
        code = str(row.code)
        if not is_active(row.status) or code in exclude or (include and code not in include):
            continue
        if not TENANT_CODE_RE.fullmatch(code):
            problems.append(TenantProblem(
                code, f"tenant code {code!r} refused: must match ^[A-Za-z0-9_]{{1,50}}$ "
                      "(it becomes part of database and lock names)"))
            continue
        tenants.append(Tenant(int(row.id_org), code, str(row.name), row.org_serial_code))
    return tenants, problems


class Databases:
    """Engines by URL: created on first use, shared by threads, disposed together."""

    def __init__(self, settings: Settings, io_timeout: float | None = None) -> None:
        self.settings = settings
        self.io_timeout = io_timeout  # client read/write timeout of MySQL connections
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def engine(self, raw_url: str) -> Engine:
        with self._lock:
            engine = self._engines.get(raw_url)
            if engine is None:
                engine = make_engine(self.url(raw_url), self.settings.database,
                                     self.io_timeout)
                self._engines[raw_url] = engine
            return engine

    def url(self, raw_url: str) -> URL:
        return self.settings.database.url(raw_url)

    @property
    def core(self) -> Engine:
        return self.engine(self.settings.database.core_url)

    @property
    def coordination(self) -> Engine:
        return self.engine(self.settings.database.coordination_url or
                           self.settings.database.core_url)

    def tenant(self, code: str) -> Engine:
        return self.engine(self.settings.tenant_url(code))

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
