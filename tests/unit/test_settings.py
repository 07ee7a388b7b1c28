"""Settings: defaults, the shipped file, environment overrides, secrets, bad input."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import bgworkers

from bgworkers.jobs import REGISTRY
from bgworkers.settings import Settings, SettingsError, load_settings, parse_duration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "settings.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


# (id, TOML text, expected "key: problem" fragment; the file name is checked separately)
MALFORMED = [
    ("unknown top-level key", "colour = 'red'", "colour: unknown key"),
    (
        "unknown nested key",
        "[database]\ncore_urll = 'sqlite:///x.db'",
        "database.core_urll: unknown key",
    ),
    ("unknown job", "[jobs.nightly_report]\nevery = '1h'", "jobs.nightly_report: unknown key"),
    (
        "bad duration",
        "[jobs.serial_outbox]\nevery = '5x'",
        "jobs.serial_outbox.every: invalid duration '5x'",
    ),
    (
        "zero interval",
        "[jobs.serial_outbox]\nevery = '0s'",
        "jobs.serial_outbox.every: must be longer than 0",
    ),
    (
        "every and cron",
        "[jobs.serial_outbox]\nevery = '5m'\ncron = '*/5 * * * *'",
        "jobs.serial_outbox: set either 'every' or 'cron', not both",
    ),
    (
        "bad cron field",
        "[jobs.serial_consistency]\ncron = '61 * * * *'",
        "jobs.serial_consistency.cron: invalid cron expression '61 * * * *'",
    ),
    (
        "cron with 3 fields",
        "[jobs.serial_consistency]\ncron = '0 * *'",
        "jobs.serial_consistency.cron: invalid cron expression '0 * *': expected 5 fields",
    ),
    ("cron bad weekday", "[jobs.serial_consistency]\ncron = '0 3 * * 8'", "bad day of week '8'"),
    (
        "bad URL",
        "[database]\ncore_url = 'db1.internal/bgerp'",
        "database.core_url: not a database URL",
    ),
    (
        "unknown driver",
        "[database]\ncore_url = 'mysql+nosuchdriver://u@h/bgerp'",
        "database.core_url: unknown database driver 'mysql+nosuchdriver'",
    ),
    (
        "tenant URL without placeholder",
        "[database]\ntenant_url = 'sqlite:///one.db'",
        "database.tenant_url: must contain {code} or {code_lower}",
    ),
    (
        "tenant URL unknown placeholder",
        "[database]\ntenant_url = 'sqlite:///t_{tenant}.db'",
        "database.tenant_url: unknown placeholder {tenant}",
    ),
    (
        "negative pool size",
        "[database]\npool_size = -1",
        "database.pool_size: Input should be greater than 0 (got -1)",
    ),
    (
        "zero batch size",
        "[jobs.serial_outbox]\nbatch_size = 0",
        "jobs.serial_outbox.batch_size: Input should be greater than 0 (got 0)",
    ),
    (
        "negative duration",
        "[scheduler]\nlease_ttl = -5",
        "scheduler.lease_ttl: invalid duration -5: must not be negative",
    ),
    (
        "wrong type",
        "[scheduler]\nmax_workers = 'many'",
        "scheduler.max_workers: Input should be a valid integer",
    ),
    (
        "unknown dashboard table",
        "[jobs.dashboard_fast]\ntables = ['mv_token_flow', 'mv_team_workload']",
        "jobs.dashboard_fast.tables: unknown table 'mv_token_flow'",
    ),
    (
        "table in two tiers",
        "[jobs.dashboard_slow]\ntables = ['mv_dashboard_trends', 'mv_team_workload']",
        "jobs: table 'mv_team_workload' is in both jobs.dashboard_fast and jobs.dashboard_slow",
    ),
    (
        "bad tenant code in include",
        "[tenants]\ninclude = ['DEFAULT', 'maison-atelier']",
        "tenants.include.1: tenant code 'maison-atelier' refused: must match",
    ),
    (
        "bad tenant code as URL key",
        "[tenants.urls]\n'a b' = 'sqlite:///ab.db'",
        "tenants.urls.a b.[key]: tenant code 'a b' refused: must match",
    ),
    (
        "missing secret file",
        "[database]\npassword_file = '/nonexistent/db_password'",
        "database: password_file: cannot read '/nonexistent/db_password': No such file",
    ),
    (
        "unknown time zone",
        "[erp]\ntimezone = 'Asia/Atlantis'",
        "erp.timezone: unknown time zone 'Asia/Atlantis'",
    ),
    (
        "unknown token status",
        "[erp]\nlive_token_statuses = ['ready', 'sleeping']",
        "erp.live_token_statuses.1: Input should be",
    ),
    ("bad log level", "[logging]\nlevel = 'verbose'", "logging.level: Input should be"),
    (
        "bad exempt regex",
        "[jobs.serial_consistency]\nexempt_patterns = ['^TEMP-(']",
        "jobs.serial_consistency.exempt_patterns.0: invalid regular expression '^TEMP-('",
    ),
    (
        "jitter fraction out of range",
        "[jobs.serial_outbox]\nbackoff_jitter = 1.5",
        "jobs.serial_outbox.backoff_jitter: Input should be less than 1",
    ),
    ("empty backoff", "[jobs.serial_outbox]\nbackoff = []", "jobs.serial_outbox.backoff:"),
    ("section is not a table", "database = 'sqlite:///x.db'", "database: Input should be"),
    ("invalid TOML", "[database\ncore_url = 1", "invalid TOML: "),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_settings_name_file_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = problems(tmp_path, text)
    assert expected in message
    for line in message.splitlines():
        assert line.startswith(f"{tmp_path / 'settings.toml'}: ")


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    message = problems(tmp_path, "[database]\npool_size = 0\n[logging]\nlevel = 'loud'\n")
    assert "database.pool_size" in message and "logging.level" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml: file not found"):
        load_settings(tmp_path / "nope.toml")


def test_environment_overrides_file_and_is_named_in_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[database]\ncore_url = 'sqlite:///file.db'\npool_size = 3\n")
    monkeypatch.setenv("BGWORKERS_DATABASE__CORE_URL", "sqlite:///env.db")
    monkeypatch.setenv("BGWORKERS_JOBS__SERIAL_OUTBOX__EVERY", "2m")
    monkeypatch.setenv("BGWORKERS_TENANTS__INCLUDE", '["DEFAULT"]')
    settings = load_settings(path)
    assert settings.database.core_url == "sqlite:///env.db"
    assert settings.database.pool_size == 3
    assert settings.jobs.serial_outbox.every == timedelta(minutes=2)
    assert settings.tenants.include == ["DEFAULT"]
    monkeypatch.setenv("BGWORKERS_DATABASE__POOL_SIZE", "-3")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert "database.pool_size: Input should be greater than 0" in str(info.value)
    assert "(set by environment variable BGWORKERS_DATABASE__POOL_SIZE)" in str(info.value)


def test_shipped_settings_are_valid_and_equal_the_defaults() -> None:
    assert load_settings(SHIPPED).public_dict() == Settings().public_dict()


def test_every_key_in_shipped_settings_has_a_comment() -> None:
    lines = SHIPPED.read_text().splitlines()
    uncommented = []
    for number, line in enumerate(lines):
        if re.match(r"^[A-Za-z_]+\s*=", line):
            above = lines[number - 1].strip() if number else ""
            if "#" not in line and not above.startswith("#"):
                uncommented.append(line)
    assert uncommented == []


def test_every_job_table_has_a_default_trigger() -> None:
    settings = Settings()
    for spec in REGISTRY:
        job = spec.settings_in(settings)
        assert (job.every is None) != (job.cron is None)


def test_cron_replaces_default_interval(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[jobs.serial_consistency]\ncron = '0 * * * *'"))
    assert settings.jobs.serial_consistency.cron == "0 * * * *"
    assert settings.jobs.serial_consistency.every is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("250ms", 0.25),
        (45, 45),
        ("2w", 1209600),
        (" 1h 5m ", 3900),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 minutes", "1h-5m", "1.5.2h", True])
def test_bad_durations(text: str | bool) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# ------------------------------------------------------------------ secrets

PASSWORD = "Tr0ub4dor&3-known-secret"


def test_password_from_file_fills_urls_without_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    settings = load_settings(
        write(
            tmp_path,
            f"""
[database]
core_url = "mysql+mysqldb://bgworkers@db1/bgerp"
password_file = "{tmp_path / "pw"}"
""",
        )
    )
    url = settings.database.url(settings.database.core_url)
    assert url.password == PASSWORD
    assert PASSWORD in settings.secret_values()


def test_password_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db_password").write_text(PASSWORD)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(
        write(tmp_path, "[database]\ncore_url = 'mysql+mysqldb://bgw@db1/bgerp'\n")
    )
    assert settings.database.url(settings.database.core_url).password == PASSWORD


def test_blank_credential_means_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db_password").write_text(" ")  # the unit's SetCredential= fallback
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(write(tmp_path, ""))
    assert settings.database.password is None


def test_explicit_password_wins_over_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db_password").write_text("from-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("BGWORKERS_DATABASE__PASSWORD", PASSWORD)
    settings = load_settings(write(tmp_path, ""))
    assert settings.database.password is not None
    assert settings.database.password.get_secret_value() == PASSWORD


def test_check_config_masks_every_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[database]
core_url = "mysql+mysqldb://bgworkers:{PASSWORD}@db1/bgerp"
password = "{PASSWORD}"
[tenants.urls]
maison_atelier = "mysql+mysqldb://other:{PASSWORD}@db3/bgerp_t_maison_atelier"
""",
    )
    result = bgworkers("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "bgworkers:***@db1" in result.stdout


def test_bad_settings_exit_2_without_traceback_or_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[database]
core_url = "mysql+mysqldb://bgworkers:{PASSWORD}@db1/bgerp"
password = "{PASSWORD}"
pool_size = -1
""",
    )
    result = bgworkers(
        "check-config", "--config", str(path), env={"BGWORKERS_DATABASE__PASSWORD": PASSWORD + "x"}
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"{path}: database.pool_size: Input should be greater than 0 (got -1)"
    )
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[logging]\nlevel = 'loud'\n")
    result = bgworkers("jobs", env={"BGWORKERS_CONFIG": str(path)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: logging.level:")


def test_relative_sqlite_paths_follow_the_settings_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write(
        etc,
        "[database]\ncore_url = 'sqlite:///data/core.db'\n"
        "tenant_url = 'sqlite:///data/t_{code_lower}.db'\n"
        "coordination_url = 'sqlite:////abs/coord.db'\n",
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the same files
    settings = load_settings(Path("etc") / path.name)
    db = settings.database
    assert db.url(db.core_url).database == str(etc / "data" / "core.db")
    assert db.url(settings.tenant_url("DEFAULT")).database == str(etc / "data" / "t_default.db")
    assert db.url(db.coordination_url or "").database == "/abs/coord.db"
    assert db.url("sqlite:///:memory:").database == ":memory:"
    assert db.core_url == "sqlite:///data/core.db"  # the setting itself is kept as written
