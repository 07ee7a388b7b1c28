"""Core database (production name `bgerp`): the platform tables the jobs read and write."""

from sqlalchemy import CHAR, Column, DateTime, Enum, Index, Integer, MetaData, String, Table

from bgworkers.db.types import BigId, BinaryString64

metadata = MetaData()

organization = Table(
    "organization",
    metadata,
    Column("id_org", Integer, primary_key=True),
    Column("code", String(50), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    # 'active' or 1 means active; both forms exist in the wild.
    Column("status", String(20), nullable=False, server_default="active"),
    Column("org_serial_code", String(8)),
)

serial_registry = Table(
    "serial_registry",
    metadata,
    Column("id_serial", BigId, primary_key=True, autoincrement=True),
    Column("serial_code", BinaryString64, nullable=False, unique=True),
    Column("tenant_id", Integer, nullable=False),
    Column("org_code", String(50), nullable=False),
    Column(
        "production_type",
        Enum("hatthasilpa", "oem", "classic", name="production_type"),
        nullable=False,
    ),
    Column("sku", String(64)),
    Column("job_ticket_id", Integer),
    Column("dag_token_id", BigId),
    Column("status", String(32), nullable=False, server_default="active"),
    Column("hash_signature", String(64)),
    Column("hash_salt_version", Integer),
    Column("checksum", CHAR(1)),
    Column(
        "serial_scope",
        Enum("piece", "batch", name="serial_scope"),
        nullable=False,
        server_default="piece",
    ),
    Column("created_at", DateTime, nullable=False),  # UTC
    Index("ix_serial_registry_tenant_created", "tenant_id", "created_at"),
    Index("ix_serial_registry_dag_token", "dag_token_id"),
)
