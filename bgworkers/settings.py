"""Settings: one validated object built from settings.toml and BGWORKERS_* variables.

Precedence (highest first): environment (`BGWORKERS_SECTION__KEY`), the TOML
file, the defaults below.  A bad value raises SettingsError whose lines each
name the file, the key path and the problem; no secret is ever echoed.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainSerializer,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from bgworkers.cron import cron_trigger

TENANT_CODE_RE = re.compile(r"^[A-Za-z0-9_]{1,50}$")
DEFAULT_CONFIG = Path("settings.toml")
ENV_PREFIX = "BGWORKERS_"

DASHBOARD_TABLES = (
    "mv_token_flow_summary",
    "mv_node_bottlenecks",
    "mv_team_workload",
    "mv_cycle_time_analytics",
    "mv_dashboard_trends",
)


class SettingsError(Exception):
    """Invalid settings; str() is one line per problem, ready for the operator."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "\n".join(f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
                      for key, problem in problems)
        )


# ---------------------------------------------------------------- value types

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'90s', '5m', '1h30m', '7d' (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return timedelta(seconds=value)
    text = str(value).strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m, 7d")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0, got {format_duration(value)}")
    return value


_as_text = PlainSerializer(format_duration, return_type=str, when_used="json")
Duration = Annotated[timedelta, BeforeValidator(parse_duration), _as_text]
PositiveDuration = Annotated[
    timedelta, BeforeValidator(parse_duration), AfterValidator(_positive), _as_text
]


def check_tenant_code(code: str) -> str:
    if not TENANT_CODE_RE.fullmatch(code):
        raise ValueError(
            f"invalid tenant code {code!r}: must match ^[A-Za-z0-9_]{{1,50}}$"
        )
    return code


TenantCode = Annotated[str, AfterValidator(check_tenant_code)]


def check_db_url(value: str) -> str:
    """A SQLAlchemy URL whose dialect and driver exist; the message hides passwords."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "not a database URL (expected e.g. mysql+mysqldb://user@host/db or sqlite:///path.db)"
        ) from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"unknown database driver {url.drivername!r}") from None
    return value


DbUrl = Annotated[str, AfterValidator(check_db_url)]


def check_tenant_url(value: str) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    unknown = fields - {"code", "code_lower"}
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}} (use {{code}} or {{code_lower}})"
        )
    if not fields:
        raise ValueError("must contain {code} or {code_lower}: each tenant has its own database")
    check_db_url(value.format(code="DEFAULT", code_lower="default"))
    return value


def check_cron(value: str) -> str:
    try:
        cron_trigger(value, "UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    return value


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like Asia/Bangkok)"
        ) from None
    return value


def check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]


# ---------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        """The URL to connect with: the configured password filled in where the URL has none."""
        url = make_url(raw)
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


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "journal", "console", "json"] = "auto"


class JobSettings(_Section):
    """What every [jobs.NAME] table has: a trigger and how it fires."""

    default_every: ClassVar[timedelta]

    enabled: bool = True
    every: PositiveDuration | None = None
    cron: Annotated[str, AfterValidator(check_cron)] | None = None
    misfire_grace: PositiveDuration | None = None
    jitter: Duration = timedelta(0)
    coalesce: bool = True

    @model_validator(mode="before")
    @classmethod
    def _one_trigger(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("every") is not None and data.get("cron") is not None:
                raise ValueError("set either 'every' or 'cron', not both")
            if data.get("every") is None and data.get("cron") is None:
                data = {**data, "every": cls.default_every}
        return data


class SerialConsistencySettings(JobSettings):
    default_every = timedelta(hours=1)
    salt_key_re: ClassVar[re.Pattern[str]] = re.compile(
        r"(hatthasilpa|oem|classic):(0|[1-9][0-9]{0,8})")
    salt_value_re: ClassVar[re.Pattern[str]] = re.compile(r"[0-9a-fA-F]{64}")

    dry_run: bool = False
    orphan_after: PositiveDuration = timedelta(days=7)
    chunk_size: PositiveInt = 5000
    exempt_patterns: list[Annotated[str, AfterValidator(check_regex)]] = Field(
        default_factory=lambda: [
            r"^TEMP-",
            r"^[A-Z0-9]{2,10}-\d{4}-[A-Z0-9]{6}$",
            r"^MO-",
            r"^LOT-",
        ]
    )
    #: Hash salts by "<production_type>:<hash_salt_version>"; empty = no hash check.
    salts: dict[str, SecretStr] = Field(default_factory=dict)
    #: systemd credential read when `salts` is empty: lines "hatthasilpa:1=<64 hex>".
    salts_credential: str = "serial_salts"

    @field_validator("salts")
    @classmethod
    def _check_salts(cls, salts: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key, value in salts.items():
            cls._check_salt(key, value.get_secret_value(), f"salt {key!r}")
        return salts

    @classmethod
    def _check_salt(cls, key: str, value: str, where: str) -> None:
        if not cls.salt_key_re.fullmatch(key):
            raise ValueError(f"{where}: key must be <production_type>:<version> with a type "
                             "of hatthasilpa, oem, classic (e.g. hatthasilpa:1)")
        if not cls.salt_value_re.fullmatch(value):
            raise ValueError(f"{where}: the salt must be 64 hexadecimal digits")

    @model_validator(mode="after")
    def _salts_from_credential(self) -> SerialConsistencySettings:
        """`salts` from the environment or TOML, else $CREDENTIALS_DIRECTORY/<salts_credential>."""
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if self.salts or not creds or not (Path(creds) / self.salts_credential).is_file():
            return self
        path = Path(creds) / self.salts_credential
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"systemd credential {str(path)!r} (salts_credential): cannot read: "
                             f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
        salts: dict[str, SecretStr] = {}
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key, sep, value = (part.strip() for part in text.partition("="))
            where = f"systemd credential {str(path)!r} (salts_credential) line {number}"
            if not sep:
                raise ValueError(f"{where}: expected <production_type>:<version>=<64 hex>")
            self._check_salt(key, value, where)
            if key in salts:
                raise ValueError(f"{where}: {key} is given twice")
            salts[key] = SecretStr(value)
        object.__setattr__(self, "salts", salts)
        return self

    def salt(self, production_type: str, version: int) -> str | None:
        """The salt for a registry row's production type and salt version, if configured."""
        secret = self.salts.get(f"{production_type}:{version}")
        return secret.get_secret_value() if secret is not None else None


class SerialOutboxSettings(JobSettings):
    default_every = timedelta(minutes=5)

    batch_size: PositiveInt = 100
    max_retries: PositiveInt = 10
    backoff: list[PositiveDuration] = Field(
        default_factory=lambda: [parse_duration(d) for d in ("1m", "5m", "15m", "1h", "6h")],
        min_length=1,
    )
    backoff_jitter: float = Field(default=0.1, ge=0, lt=1)


class DashboardTierSettings(JobSettings):
    tables: list[str] = Field(default_factory=list)
    delete_batch: PositiveInt = 5000

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, tables: list[str]) -> list[str]:
        for name in tables:
            if name not in DASHBOARD_TABLES:
                raise ValueError(f"unknown table {name!r} (known: {', '.join(DASHBOARD_TABLES)})")
        if len(set(tables)) != len(tables):
            raise ValueError("a table is listed twice")
        return tables


class DashboardFastSettings(DashboardTierSettings):
    default_every = timedelta(minutes=1)
    tables: list[str] = Field(
        default_factory=lambda: ["mv_token_flow_summary", "mv_node_bottlenecks", "mv_team_workload"]
    )


class DashboardMediumSettings(DashboardTierSettings):
    default_every = timedelta(minutes=5)
    tables: list[str] = Field(default_factory=lambda: ["mv_cycle_time_analytics"])


class DashboardSlowSettings(DashboardTierSettings):
    default_every = timedelta(minutes=15)
    tables: list[str] = Field(default_factory=lambda: ["mv_dashboard_trends"])


class HeartbeatSettings(JobSettings):
    default_every = timedelta(minutes=1)

    enabled: bool = False
    hold: Duration = timedelta(0)


class JobsSettings(_Section):
    serial_consistency: SerialConsistencySettings = Field(default_factory=SerialConsistencySettings)
    serial_outbox: SerialOutboxSettings = Field(default_factory=SerialOutboxSettings)
    dashboard_fast: DashboardFastSettings = Field(default_factory=DashboardFastSettings)
    dashboard_medium: DashboardMediumSettings = Field(default_factory=DashboardMediumSettings)
    dashboard_slow: DashboardSlowSettings = Field(default_factory=DashboardSlowSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)

    @model_validator(mode="after")
    def _tables_in_one_tier(self) -> JobsSettings:
        seen: dict[str, str] = {}
        for tier in ("dashboard_fast", "dashboard_medium", "dashboard_slow"):
            for table in getattr(self, tier).tables:
                if table in seen:
                    raise ValueError(
                        f"table {table!r} is in both jobs.{seen[table]} and jobs.{tier}"
                    )
                seen[table] = tier
        return self

    def get(self, name: str) -> JobSettings:
        job = getattr(self, name, None)
        if not isinstance(job, JobSettings):
            raise KeyError(name)
        return job


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    erp: ErpSettings = Field(default_factory=ErpSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
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
        values.extend(salt.get_secret_value()
                      for salt in self.jobs.serial_consistency.salts.values())
        for raw in (self.database.core_url, self.database.coordination_url,
                    *self.tenants.urls.values()):
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
