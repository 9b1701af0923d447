"""strongroom: fast, deduplicating, encrypted backups for fleets of servers."""

__version__ = "0.1.0"
