"""Engines for the catalog's two databases, and the retry rule for contended writes.

SQLite: WAL, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for writes, so a
writer waits for the lock up front instead of failing when it upgrades a read lock.
PostgreSQL: psycopg 3, sessions in UTC; no table locks, contention shows up only as
deadlocks or serialization failures, which are retried like "database is locked".
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from strongroom.catalog.errors import CatalogURLError

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_ATTEMPTS = 8
RETRY_BUDGET_S = 30.0
WRITE_OPTION = "strongroom_write"
# PostgreSQL SQLSTATEs worth a retry: serialization_failure, deadlock_detected.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL for a catalog URL; PostgreSQL always through psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogURLError(f"not a catalog URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise CatalogURLError(
                f"catalog {url!r}: an in-memory SQLite catalog is not supported",
                hint="give a file: sqlite:///var/lib/strongroom/catalog.db",
            )
        return parsed.set(drivername="sqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    raise CatalogURLError(f"catalog {url!r}: unsupported database {backend!r}")


def redacted_url(url: str) -> str:
    """The URL as the user wrote it, with any password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def create_catalog_engine(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=20,
        connect_args={
            "options": "-c timezone=UTC",
            "application_name": "strongroom",
            "connect_timeout": 10,
        },
    )


def _sqlite_engine(url: URL) -> Engine:
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        pool_size=8,
        max_overflow=56,
        pool_timeout=120,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver: transactions are begun below, in the mode we want.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough for an index
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA cache_size = -32768")  # 32 MiB, not 2: big scans re-read
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def is_contention(exc: DBAPIError) -> bool:
    """A write lost a race for a lock and may simply be tried again."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in RETRY_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, sa.exc.OperationalError) and (
        "database is locked" in message or "database is busy" in message
    )


def with_retries(
    attempt: Callable[[], T], attempts: int = WRITE_ATTEMPTS, budget_s: float = RETRY_BUDGET_S
) -> T:
    """Run ``attempt`` again, after a jittered pause, while it fails with contention.

    A failure after ``budget_s`` is final: SQLite has then already waited its busy
    timeout, so whatever holds the lock is not about to let go.
    """
    started = time.monotonic()
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except DBAPIError as exc:
            spent = time.monotonic() - started
            if number == attempts or spent > budget_s or not is_contention(exc):
                raise
            time.sleep(min(2.0, 0.02 * 2**number) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")
