"""SQLAlchemy Core definitions: `core` (platform), `tenant` (per tenant), `own` (ours)."""

from bgworkers.schema import core, own, tenant

__all__ = ["core", "own", "tenant"]
