"""Synthetic ERP data of a leather-goods atelier, for the demo, the tests and the benchmarks.

`generate()` creates the organizations in core, the ERP schema where it is
missing, then for every active tenant: routing graphs and nodes, teams and
members, job tickets with their graph instances and serials, flow tokens with
events and assignments, core serial_registry rows, outbox and (resolved)
quarantine history.  A small known share of every serial-consistency case of
the contract is planted and reported exactly.  The registry rows are signed
with the public demo salts `DEMO_SALTS` (version `DEMO_SALT_VERSION`).

Times: the serial tables (core serial_registry; job_ticket_serial,
serial_link_outbox and serial_quarantine in the tenant) hold naive UTC, every
other tenant table naive ERP local time (`[erp] timezone`), all anchored on
`at`.
"""

from bgworkers.demo.catalog import DEMO_SALT_VERSION, DEMO_SALTS, PROFILE, Profile
from bgworkers.demo.main import generate
from bgworkers.demo.plan import planted_counts

__all__ = ["DEMO_SALTS", "DEMO_SALT_VERSION", "PROFILE", "Profile", "generate", "planted_counts"]
