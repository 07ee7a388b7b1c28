"""Alembic environment: driven by bgworkers.schema.migrate, never by alembic.ini."""

from alembic import context

from bgworkers.schema.migrate import VERSION_TABLE

config = context.config

if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes["dialect_name"],
        literal_binds=True,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
else:
    context.configure(
        connection=config.attributes["connection"],
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )

with context.begin_transaction():
    context.run_migrations()
