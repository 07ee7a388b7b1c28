"""Existence-checked operations for migrations (offline mode emits them unconditionally)."""

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.schema import CreateIndex, CreateTable


def _inspector() -> Any:
    return None if context.is_offline_mode() else sa.inspect(op.get_bind())


def create_table(table: sa.Table) -> None:
    insp = _inspector()
    if insp is not None and insp.has_table(table.name):
        return
    op.execute(CreateTable(table))
    for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
        op.execute(CreateIndex(index))


def add_column(table: sa.Table, name: str) -> None:
    insp = _inspector()
    if insp is not None and name in {c["name"] for c in insp.get_columns(table.name)}:
        return
    op.add_column(table.name, table.c[name]._copy())


def create_index(index: sa.Index) -> None:
    insp = _inspector()
    table = index.table
    assert table is not None
    if insp is not None and index.name in {ix["name"] for ix in insp.get_indexes(table.name)}:
        return
    op.execute(CreateIndex(index))


def widen_enum(table: sa.Table, name: str) -> None:
    """MySQL ENUM columns must list new values; SQLite stores them as plain text."""
    column = table.c[name]
    if context.is_offline_mode():
        dialect = context.get_context().dialect.name
    else:
        dialect = op.get_bind().dialect.name
    if dialect != "mysql":
        return
    insp = _inspector()
    if insp is not None:
        current = next(c for c in insp.get_columns(table.name) if c["name"] == name)["type"]
        wanted = set(column.type.enums)  # type: ignore[attr-defined]
        if wanted <= set(getattr(current, "enums", ())):
            return
    op.alter_column(table.name, name, type_=column.type, existing_nullable=column.nullable)
