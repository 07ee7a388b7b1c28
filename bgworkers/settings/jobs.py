"""[jobs.NAME] tables: what every job has (a trigger) and each job's own options."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from bgworkers.settings.values import (
    DASHBOARD_TABLES,
    Duration,
    PositiveDuration,
    _Section,
    check_cron,
    check_regex,
    parse_duration,
)


class JobSettings(_Section):
    """What every [jobs.NAME] table has: a trigger and how it fires."""

    default_every: ClassVar[timedelta]
    default_timeout: ClassVar[timedelta]

    enabled: bool = True
    every: PositiveDuration | None = None
    #: The runtime limit of one tenant run (see bgworkers.db.limits); the class
    #: default when not set.
    timeout: PositiveDuration | None = None
    cron: Annotated[str, AfterValidator(check_cron)] | None = None
    misfire_grace: PositiveDuration | None = None
    jitter: Duration = timedelta(0)
    coalesce: bool = True
    #: At start, run once a tick missed while no daemon ran (like systemd's Persistent=).
    catch_up: bool = False

    @property
    def run_limit(self) -> timedelta:
        return self.timeout or self.default_timeout

    @property
    def dry_run_only(self) -> bool:
        """Whether the table asks for dry runs only (a job with a `dry_run` key)."""
        return False

    @model_validator(mode="before")
    @classmethod
    def _one_trigger(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("every") is not None and data.get("cron") is not None:
                raise ValueError("set either 'every' or 'cron', not both")
            if data.get("every") is None and data.get("cron") is None:
                data = {**data, "every": cls.default_every}
            if data.get("timeout") is None:
                data = {**data, "timeout": cls.default_timeout}
        return data


class SerialConsistencySettings(JobSettings):
    default_every = timedelta(hours=1)
    default_timeout = timedelta(minutes=30)
    salt_key_re: ClassVar[re.Pattern[str]] = re.compile(
        r"(hatthasilpa|oem|classic):(0|[1-9][0-9]{0,8})"
    )
    salt_value_re: ClassVar[re.Pattern[str]] = re.compile(r"[0-9a-fA-F]{64}")

    catch_up: bool = True
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

    @property
    def dry_run_only(self) -> bool:
        return self.dry_run

    @field_validator("salts")
    @classmethod
    def _check_salts(cls, salts: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key, value in salts.items():
            cls._check_salt(key, value.get_secret_value(), f"salt {key!r}")
        return salts

    @classmethod
    def _check_salt(cls, key: str, value: str, where: str) -> None:
        if not cls.salt_key_re.fullmatch(key):
            raise ValueError(
                f"{where}: key must be <production_type>:<version> with a type "
                "of hatthasilpa, oem, classic (e.g. hatthasilpa:1)"
            )
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
            raise ValueError(
                f"systemd credential {str(path)!r} (salts_credential): cannot read: "
                f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
            ) from None
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
    default_timeout = timedelta(minutes=4)

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
    default_timeout = timedelta(seconds=45)
    tables: list[str] = Field(
        default_factory=lambda: ["mv_token_flow_summary", "mv_node_bottlenecks", "mv_team_workload"]
    )


class DashboardMediumSettings(DashboardTierSettings):
    default_every = timedelta(minutes=5)
    default_timeout = timedelta(minutes=4)
    tables: list[str] = Field(default_factory=lambda: ["mv_cycle_time_analytics"])


class DashboardSlowSettings(DashboardTierSettings):
    default_every = timedelta(minutes=15)
    default_timeout = timedelta(minutes=10)
    tables: list[str] = Field(default_factory=lambda: ["mv_dashboard_trends"])


class HeartbeatSettings(JobSettings):
    default_every = timedelta(minutes=1)
    default_timeout = timedelta(seconds=30)

    enabled: bool = False
    hold: Duration = timedelta(0)


class JobsSettings(_Section):
    """One field per job of `bgworkers.jobs.REGISTRY`, in its order, of the type its spec
    declares (tests/unit/test_job_declarations.py checks it).  Written out rather than
    built from the registry: settings load without importing the jobs (which need
    them), and mypy knows the type of `settings.jobs.serial_outbox`."""

    serial_consistency: SerialConsistencySettings = Field(default_factory=SerialConsistencySettings)
    serial_outbox: SerialOutboxSettings = Field(default_factory=SerialOutboxSettings)
    dashboard_fast: DashboardFastSettings = Field(default_factory=DashboardFastSettings)
    dashboard_medium: DashboardMediumSettings = Field(default_factory=DashboardMediumSettings)
    dashboard_slow: DashboardSlowSettings = Field(default_factory=DashboardSlowSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)

    @model_validator(mode="after")
    def _tables_in_one_tier(self) -> JobsSettings:
        seen: dict[str, str] = {}
        tiers = [
            (name, job)
            for name in type(self).model_fields
            if isinstance(job := self.get(name), DashboardTierSettings)
        ]
        for tier, job in tiers:
            for table in job.tables:
                if table in seen:
                    raise ValueError(
                        f"table {table!r} is in both jobs.{seen[table]} and jobs.{tier}"
                    )
                seen[table] = tier
        return self

    def longest_timeout(self) -> timedelta:
        return max(self.get(name).run_limit for name in type(self).model_fields)

    @classmethod
    def names(cls) -> list[str]:
        """The jobs, in the registry's order."""
        return list(cls.model_fields)

    def get(self, name: str) -> JobSettings:
        job = getattr(self, name, None)
        if not isinstance(job, JobSettings):
            raise KeyError(name)
        return job
