"""Counterpart national node: signed member logs, storage, replication and lookup."""

__version__ = "0.1.0"
