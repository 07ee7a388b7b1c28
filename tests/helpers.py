"""Small helpers shared by the test suites (importable as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def require(condition: bool, reason: str) -> None:
    """Skip the test unless *condition* holds; under CI (CI=true) fail instead.

    A test that needs root, journald or MariaDB may be skipped on a laptop, but
    in CI a missing prerequisite is a broken pipeline, not a pass.
    """
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class DbUrls:
    """Database URLs private to one test: a core URL and a tenant URL template."""

    backend: str  # "sqlite" or "mariadb"
    core_url: str
    tenant_url: str  # contains {code_lower}

    def tenant(self, code: str) -> str:
        return self.tenant_url.format(code=code, code_lower=code.lower())


def write_settings(path: Path, db_urls: DbUrls, extra: str = "") -> Path:
    """Write a settings.toml using *db_urls* with JSON logs; *extra* TOML is merged in."""
    data: dict[str, Any] = {
        "database": {"core_url": db_urls.core_url, "tenant_url": db_urls.tenant_url},
        "logging": {"format": "json", "level": "info"},
    }
    _merge(data, tomllib.loads(extra))
    path.write_text(_dump_toml(data))
    return path


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Tables of scalars and lists (all settings.toml needs); JSON strings are TOML strings."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    text = "\n".join(out) + ("\n\n" if out else "")
    for key, value in data.items():
        if isinstance(value, dict):
            text += _dump_toml(value, f"{prefix}.{key}" if prefix else key)
    return text
