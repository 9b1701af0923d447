"""Catalog errors, placed in strongroom's one exception tree.

StrongroomError
├── UsageError
│   ├── CatalogURLError: the URL names no database strongroom can use
│   └── CatalogSchemaError: not migrated, older or newer than this strongroom
└── CatalogUnavailable: the database cannot be reached or keeps failing
"""

from __future__ import annotations

from strongroom.errors import StrongroomError, UsageError

MIGRATE_HINT = "run `strongroom catalog migrate`"


class CatalogURLError(UsageError):
    hint = "use sqlite:///PATH or postgresql://USER@HOST/DB"


class CatalogSchemaError(UsageError):
    hint = MIGRATE_HINT


class CatalogUnavailable(StrongroomError):
    hint = "check that the catalog database is reachable (--catalog, [catalog] url)"
