"""Drive Alembic programmatically: what is pending, apply it, or print its SQL."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

Chain = Literal["coordination", "tenant"]
VERSION_TABLE = "bgw_schema_version"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _config(chain: Chain, output: TextIO | None = None) -> Config:
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_locations", str(MIGRATIONS / chain))
    cfg.set_main_option("path_separator", "os")
    return cfg


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def pending(engine: Engine, chain: Chain) -> list[str]:
    """Revisions not yet applied, oldest first."""
    script = ScriptDirectory.from_config(_config(chain))
    revisions = script.iterate_revisions("heads", current(engine) or "base")
    return [rev.revision for rev in reversed(list(revisions))]


def upgrade(engine: Engine, chain: Chain, sql_out: TextIO | None = None) -> list[str]:
    """Apply pending revisions and return them; with sql_out, write their SQL there instead."""
    todo = pending(engine, chain)
    if not todo:
        return []
    cfg = _config(chain, sql_out)
    if sql_out is not None:
        cfg.attributes["dialect_name"] = engine.dialect.name
        start = current(engine)
        command.upgrade(cfg, f"{start}:heads" if start else "heads", sql=True)
        return todo
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    return todo
