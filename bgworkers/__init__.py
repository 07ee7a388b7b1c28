"""bgworkers: the Bellavier ERP's background jobs in one systemd-managed daemon."""

__version__ = "0.1.0"
