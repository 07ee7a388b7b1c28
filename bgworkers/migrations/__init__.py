"""Alembic migrations: the project's additive schema changes.

Two independent chains share this env.py: `coordination` (run history and
leases, in the coordination DB, which is the core DB unless configured) and
`tenant` (applied to every tenant DB).  Each step checks what exists first, so
it is safe on an ERP database that someone already altered by hand.
"""
