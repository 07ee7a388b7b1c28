"""Hash salts of the serial consistency job: environment, TOML, systemd credential; never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgworkers.settings import Settings, SettingsError, load_settings

SALT_A = "0123456789abcdef" * 4
SALT_B = "FEDCBA9876543210" * 4
ENV = "BGWORKERS_JOBS__SERIAL_CONSISTENCY__SALTS"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def load(tmp_path: Path, extra: str = "") -> Settings:
    path = tmp_path / "settings.toml"
    path.write_text("[database]\ncore_url = 'sqlite:///core.db'\n" + extra)
    return load_settings(path)


def problems(tmp_path: Path, extra: str = "") -> str:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, extra)
    return str(info.value)


def test_no_salts_by_default(tmp_path: Path) -> None:
    job = load(tmp_path).jobs.serial_consistency
    assert job.salts == {} and job.salt("hatthasilpa", 1) is None


def test_salts_from_environment_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, json.dumps({"hatthasilpa:1": SALT_A, "oem:2": SALT_B}))
    settings = load(tmp_path)
    job = settings.jobs.serial_consistency
    assert job.salt("hatthasilpa", 1) == SALT_A and job.salt("oem", 2) == SALT_B
    assert job.salt("hatthasilpa", 2) is None and job.salt("classic", 1) is None
    assert {SALT_A, SALT_B} <= set(settings.secret_values())
    public = json.dumps(settings.public_dict())
    assert SALT_A not in public and SALT_B not in public
    assert "hatthasilpa:1" in public


def test_salts_from_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serial_salts").write_text(
        f"# salts of the serial registry\nhatthasilpa:1={SALT_A}\n\n  oem:3 = {SALT_B}  \n"
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load(tmp_path)
    job = settings.jobs.serial_consistency
    assert job.salt("hatthasilpa", 1) == SALT_A and job.salt("oem", 3) == SALT_B
    assert SALT_B in settings.secret_values()
    # an explicit setting wins over the credential
    monkeypatch.setenv(ENV, json.dumps({"classic:1": SALT_B}))
    assert load(tmp_path).jobs.serial_consistency.salts.keys() == {"classic:1"}


def test_credential_name_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "salts2").write_text(f"hatthasilpa:7={SALT_A}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    job = load(tmp_path, "[jobs.serial_consistency]\nsalts_credential = 'salts2'\n")
    assert job.jobs.serial_consistency.salt("hatthasilpa", 7) == SALT_A


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hatthasilpa:1=SECRETVALUE", "line 1: the salt must be 64 hexadecimal digits"),
        (f"hatthasilpa:1={SALT_A}X", "line 1: the salt must be 64 hexadecimal digits"),
        ("SECRETVALUE", "line 1: expected <production_type>:<version>=<64 hex>"),
        (f"hybrid:1={SALT_A}", "line 1: key must be <production_type>:<version>"),
        (f"hatthasilpa:01={SALT_A}", "line 1: key must be <production_type>:<version>"),
        (f"oem:1={SALT_A}\noem:1={SALT_B}", "line 2: oem:1 is given twice"),
    ],
)
def test_bad_credential_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: str
) -> None:
    (tmp_path / "serial_salts").write_text(line + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    message = problems(tmp_path)
    assert expected in message and "serial_salts" in message
    assert "SECRETVALUE" not in message and SALT_A not in message and SALT_B not in message


@pytest.mark.parametrize(
    "value",
    [
        {"hatthasilpa:1": "SECRETVALUE"},
        {"hatthasilpa:1": SALT_A + "00"},
        {"hatthasilpa": SALT_A},
        {"hatthasilpa:1": 12345},
    ],
)
def test_bad_salts_in_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: dict[str, object]
) -> None:
    monkeypatch.setenv(ENV, json.dumps(value))
    message = problems(tmp_path)
    assert "jobs.serial_consistency.salts" in message and ENV in message
    assert "SECRETVALUE" not in message and SALT_A not in message and "12345" not in message


def test_bad_salt_in_toml_is_not_echoed(tmp_path: Path) -> None:
    message = problems(tmp_path, "[jobs.serial_consistency.salts]\n'oem:1' = 'SECRETVALUE'\n")
    assert "jobs.serial_consistency.salts: salt 'oem:1': the salt must be 64 hex" in message
    assert "SECRETVALUE" not in message
