"""The catalog: an index of clients, runs, snapshots, paths, markers and events.

SQLite by default, PostgreSQL for fleets; everything in it can be rebuilt from the
repositories. ``Catalog.open(url)`` is the way in; the records are plain dataclasses.
"""

from strongroom.catalog.catalog import BaseNotLatest, Catalog, Changes
from strongroom.catalog.errors import CatalogSchemaError, CatalogUnavailable, CatalogURLError
from strongroom.catalog.records import (
    ClientRecord,
    FindHit,
    Marker,
    PathEntry,
    Run,
    RunCounters,
    RunStatus,
    SnapshotRecord,
    StaleClient,
)

__all__ = [
    "BaseNotLatest",
    "Catalog",
    "CatalogSchemaError",
    "CatalogURLError",
    "CatalogUnavailable",
    "Changes",
    "ClientRecord",
    "FindHit",
    "Marker",
    "PathEntry",
    "Run",
    "RunCounters",
    "RunStatus",
    "SnapshotRecord",
    "StaleClient",
]
