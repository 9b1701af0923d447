"""The values the catalog takes and gives: frozen dataclasses, times always aware UTC."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    WARNING = "warning"
    FAILED = "failed"


@dataclass(frozen=True)
class ClientRecord:
    name: str
    host: str | None
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class RunCounters:
    """What a run did; the same numbers as the ``backup``/``run`` JSON summary."""

    bytes_read: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    files: int = 0
    warnings: int = 0


@dataclass(frozen=True)
class Run:
    id: str
    client: str
    job: str
    director: str
    started_at: datetime
    finished_at: datetime | None
    status: RunStatus
    exit_code: int | None
    counters: RunCounters
    snapshot_id: str | None
    window: str | None
    message: str | None
    log: str | None  # None when the query was asked not to load logs

    @property
    def duration(self) -> timedelta | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot as the catalog knows it; ``id`` is the repository's snapshot id.

    ``time_ns`` keeps the repository's nanosecond time when given (``time`` holds
    microseconds); it is filled in from ``time`` when read back otherwise.
    """

    id: str
    repository: str
    client: str
    job: str
    time: datetime
    tree: str
    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    hostname: str = ""
    time_ns: int | None = None


@dataclass(frozen=True)
class PathEntry:
    """One entry of a snapshot for the path index; ``path`` is absolute, '/'-separated."""

    path: str
    type: str
    size: int = 0
    mtime: datetime | None = None


@dataclass(frozen=True)
class FindHit:
    snapshot_id: str
    repository: str
    client: str
    job: str
    time: datetime
    path: str
    type: str
    size: int
    mtime: datetime | None


@dataclass(frozen=True)
class Marker:
    """An upstream job's "done" record, for ``marker`` prerequisites (last one wins)."""

    client: str
    name: str
    time: datetime
    failed: bool = False
    note: str | None = None


@dataclass(frozen=True)
class StaleClient:
    """A client without a successful run recently; ``last_success`` None: never had one."""

    name: str
    last_success: datetime | None
