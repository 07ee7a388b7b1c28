"""Settings: one validated object built from settings.toml and BGWORKERS_* variables.

Precedence (highest first): environment (`BGWORKERS_SECTION__KEY`), the TOML
file, the defaults below.  A bad value raises SettingsError whose lines each
name the file, the key path and the problem; no secret is ever echoed.
"""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bgworkers.db.dialects import sqlite_file
from bgworkers.settings.jobs import (
    DashboardFastSettings,
    DashboardMediumSettings,
    DashboardSlowSettings,
    DashboardTierSettings,
    HeartbeatSettings,
    JobSettings,
    JobsSettings,
    SerialConsistencySettings,
    SerialOutboxSettings,
)
from bgworkers.settings.values import (
    DASHBOARD_TABLES,
    DbUrl,
    PositiveDuration,
    TenantCode,
    TimeZoneName,
    _Section,
    check_listen,
    check_tenant_url,
    format_duration,
    parse_duration,
    tenant_code_problem,
)

__all__ = [
    "DASHBOARD_TABLES",
    "AlertsSettings",
    "DashboardFastSettings",
    "DashboardMediumSettings",
    "DashboardSlowSettings",
    "DashboardTierSettings",
    "DatabaseSettings",
    "ErpSettings",
    "HeartbeatSettings",
    "JobSettings",
    "JobsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "SchedulerSettings",
    "SerialConsistencySettings",
    "SerialOutboxSettings",
    "Settings",
    "SettingsError",
    "TenantsSettings",
    "config_path",
    "format_duration",
    "load_settings",
    "parse_duration",
    "tenant_code_problem",
]

DEFAULT_CONFIG = Path("settings.toml")
ENV_PREFIX = "BGWORKERS_"


class SettingsError(Exception):
    """Invalid settings; str() is one line per problem, ready for the operator."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "\n".join(
                f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
                for key, problem in problems
            )
        )


class DatabaseSettings(_Section):
    core_url: DbUrl = "sqlite:///demo-data/core.db"
    tenant_url: Annotated[str, AfterValidator(check_tenant_url)] = (
        "sqlite:///demo-data/tenant_{code_lower}.db"
    )
    coordination_url: DbUrl | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_credential: str = "db_password"
    pool_size: PositiveInt = 5
    max_overflow: NonNegativeInt = 5
    pool_recycle: PositiveDuration = timedelta(hours=1)
    pool_timeout: PositiveDuration = timedelta(seconds=30)
    connect_timeout: PositiveDuration = timedelta(seconds=10)

    #: The directory relative SQLite paths are relative to: the settings file's
    #: (set by load_settings), so the daemon and the CLI open the same files
    #: whatever their working directory; None (settings built in code): the
    #: working directory.
    _sqlite_base: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_password(self) -> DatabaseSettings:
        """password > password_file > $CREDENTIALS_DIRECTORY/<password_credential>."""
        if self.password is not None:
            return self
        if self.password_file is not None:
            try:
                secret = self.password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"password_file: cannot read {str(self.password_file)!r}: {exc.strerror}"
                ) from None
            object.__setattr__(self, "password", SecretStr(secret))
            return self
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / self.password_credential).is_file():
            secret = (Path(creds) / self.password_credential).read_text().strip()
            if secret:  # a blank credential (the unit's fallback) means no password
                object.__setattr__(self, "password", SecretStr(secret))
        return self

    def url(self, raw: str) -> URL:
        """The URL to connect with: a relative SQLite path anchored at the settings
        file's directory, the configured password filled in where the URL has none."""
        url = make_url(raw)
        name = sqlite_file(url)
        if self._sqlite_base is not None and name is not None and not Path(name).is_absolute():
            url = url.set(database=str(self._sqlite_base / name))
        if self.password is not None and url.username and url.password is None:
            url = url.set(password=self.password.get_secret_value())
        return url


class TenantsSettings(_Section):
    include: list[TenantCode] = Field(default_factory=list)
    exclude: list[TenantCode] = Field(default_factory=list)
    urls: dict[TenantCode, DbUrl] = Field(default_factory=dict)


TokenStatus = Literal["ready", "active", "waiting", "paused", "completed", "scrapped"]
LIVE_STATUSES: tuple[TokenStatus, ...] = ("ready", "active", "waiting", "paused")


class ErpSettings(_Section):
    timezone: TimeZoneName = "Asia/Bangkok"
    live_token_statuses: list[TokenStatus] = Field(default_factory=lambda: list(LIVE_STATUSES))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SchedulerSettings(_Section):
    timezone: TimeZoneName = "UTC"
    max_workers: PositiveInt = 4
    misfire_grace: PositiveDuration = timedelta(minutes=1)
    shutdown_grace: PositiveDuration = timedelta(seconds=30)
    lease_ttl: PositiveDuration = timedelta(seconds=60)
    history_retention: PositiveDuration = timedelta(days=30)


class AlertsSettings(_Section):
    """Thresholds above which an alert event is logged (and counted in metrics)."""

    quarantined_per_run: NonNegativeInt = 10
    outbox_dead_per_run: NonNegativeInt = 0
    failed_retries_per_run: NonNegativeInt = 5
    errors_per_run: NonNegativeInt = 0
    outbox_oldest_pending: PositiveDuration = timedelta(hours=1)


class MetricsSettings(_Section):
    listen: Annotated[str, AfterValidator(check_listen)] | None = None


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "journal", "console", "json"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    erp: ErpSettings = Field(default_factory=ErpSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)

    _source: str = PrivateAttr(default="(defaults)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @property
    def source(self) -> str:
        return self._source

    def tenant_url(self, code: str) -> str:
        """The raw URL of a tenant's database (override, else the template)."""
        return self.tenants.urls.get(code) or self.database.tenant_url.format(
            code=code, code_lower=code.lower()
        )

    def secret_values(self) -> list[str]:
        """Every secret string, for the log redactor."""
        values = []
        if self.database.password is not None:
            values.append(self.database.password.get_secret_value())
        values.extend(
            salt.get_secret_value() for salt in self.jobs.serial_consistency.salts.values()
        )
        for raw in (
            self.database.core_url,
            self.database.coordination_url,
            *self.tenants.urls.values(),
        ):
            if raw and (password := make_url(raw).password):
                values.append(str(password))
        return [v for v in values if v]

    def public_dict(self) -> dict[str, Any]:
        """Effective settings as plain data with every secret masked."""
        data: dict[str, Any] = self.model_dump(mode="json")
        db = data["database"]
        for key in ("core_url", "coordination_url", "tenant_url"):
            if db.get(key):
                db[key] = hide_password(db[key])
        data["tenants"]["urls"] = {k: hide_password(v) for k, v in data["tenants"]["urls"].items()}
        return data


def hide_password(raw: str) -> str:
    try:
        url = make_url(raw)
    except ArgumentError:
        return raw
    if url.password is None:
        return raw
    return url.render_as_string(hide_password=True)


def config_path(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path) -> Settings:
    """Read and validate settings; raise SettingsError naming file, key and problem."""
    source = str(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(source, [("", "file not found")]) from None
    except OSError as exc:
        raise SettingsError(source, [("", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(source, [("", f"invalid TOML: {exc}")]) from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise SettingsError(source, [_describe(err) for err in exc.errors()]) from None
    settings._source = source
    settings.database._sqlite_base = path.absolute().parent
    return settings


_SECRET_KEYS = {"password", "salts"}


def _describe(err: Any) -> tuple[str, str]:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "missing":
        problem = "required key is missing"
    else:
        problem = str(err["msg"]).removeprefix("Value error, ")
        if kind not in ("value_error", "assertion_error") and not _SECRET_KEYS & set(loc):
            value = err.get("input")
            if isinstance(value, str | int | float | bool):
                problem += f" (got {value!r})"
    env_name = _env_origin(loc)
    if env_name:
        problem += f" (set by environment variable {env_name})"
    return key, problem


def _env_origin(loc: list[str]) -> str | None:
    for end in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(loc[:end]).upper()
        if any(k.upper() == name for k in os.environ):
            return name
    return None
