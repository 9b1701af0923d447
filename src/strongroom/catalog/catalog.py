"""The catalog: clients, runs, snapshots and the path index, over SQLAlchemy Core.

It is an index, never the source of truth: ``clear()`` followed by ``record_snapshot``
for every snapshot in the repositories (oldest first, for the best dedup) rebuilds it.
Every write is one transaction, retried when it loses a race for a lock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from strongroom.catalog import migrate
from strongroom.catalog import schema as t
from strongroom.catalog.database import (
    WRITE_OPTION,
    create_catalog_engine,
    redacted_url,
    with_retries,
)
from strongroom.catalog.errors import CatalogUnavailable
from strongroom.catalog.patterns import Glob, parse_glob, prefix_upper_bound
from strongroom.catalog.planner import unindexed
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
from strongroom.clock import Clock, SystemClock
from strongroom.errors import UsageError

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit
FINISHED = (RunStatus.SUCCEEDED, RunStatus.WARNING, RunStatus.FAILED)


class _AlreadyRecorded(Exception):
    """Raised inside a transaction to roll it back: the snapshot is already known."""


class BaseNotLatest(Exception):
    """A snapshot's changes were given against a base that is not the lineage's last
    recorded snapshot (another was recorded since, or the last one was forgotten):
    record it with all its entries instead."""


@dataclass(frozen=True)
class Changes:
    """A snapshot's entries as changes against ``base``, the previous snapshot of its
    lineage: the ``entries`` given with it are the new and changed ones, ``removed``
    the paths that are gone."""

    base: str
    removed: Sequence[str]


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str
    name: str
    type: str
    size: int
    mtime_ns: int | None


class Catalog:
    """One open catalog database. Thread-safe: each call takes its own connection."""

    def __init__(
        self, engine: Engine, *, clock: Clock | None = None, display_url: str | None = None
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        # SQLite writers begin with BEGIN IMMEDIATE (see database.py); readers plainly.
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._clock: Clock = clock or SystemClock()
        self._where = display_url or engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        auto_migrate: bool = False,
        check_schema: bool = True,
        clock: Clock | None = None,
    ) -> Catalog:
        """Open ``sqlite:///PATH`` or ``postgresql://...``.

        Raises CatalogSchemaError (a UsageError) when the schema is missing or not the
        one this code needs, unless ``auto_migrate`` (migrate now) or not
        ``check_schema`` (for ``catalog migrate`` itself); CatalogUnavailable when the
        database cannot be reached; CatalogURLError for a URL it cannot use.
        """
        catalog = cls(create_catalog_engine(url), clock=clock, display_url=redacted_url(url))
        try:
            if auto_migrate:
                catalog.migrate()
            elif check_schema:
                migrate.check_revision(catalog.schema_revision(), catalog.url)
        except BaseException:
            catalog.close()
            raise
        return catalog

    @property
    def url(self) -> str:
        """The URL, password hidden."""
        return self._where

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; does nothing when it is there."""
        if self.schema_revision() == migrate.head_revision():
            return  # the usual case, without taking SQLite's write lock
        self._guard(lambda: migrate.upgrade(self._write_engine, self._where))

    def schema_revision(self) -> str | None:
        """The schema's Alembic revision; None for a database never migrated."""
        return self._read(migrate.current_revision)

    # -- clients -----------------------------------------------------------------------

    def upsert_client(
        self, name: str, *, host: str | None = None, seen_at: datetime | None = None
    ) -> None:
        """Create the client, or update its host (when given) and last-seen time."""
        seen = _aware(seen_at) if seen_at is not None else self._now()

        def write(conn: Connection) -> None:
            stmt = self._insert(t.clients).values(
                name=name, host=host, first_seen=seen, last_seen=seen
            )
            excluded = stmt.excluded
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.clients.c.name],
                    set_={
                        "host": sa.func.coalesce(excluded.host, t.clients.c.host),
                        "last_seen": sa.case(
                            (excluded.last_seen > t.clients.c.last_seen, excluded.last_seen),
                            else_=t.clients.c.last_seen,
                        ),
                    },
                )
            )

        self._write(write)

    def clients(self) -> list[ClientRecord]:
        def read(conn: Connection) -> list[ClientRecord]:
            rows = conn.execute(sa.select(t.clients).order_by(t.clients.c.name))
            return [ClientRecord(r.name, r.host, r.first_seen, r.last_seen) for r in rows]

        return self._read(read)

    # -- runs --------------------------------------------------------------------------

    def start_run(
        self,
        client: str,
        job: str,
        *,
        director: str,
        started_at: datetime | None = None,
        window: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a run as ``running``; returns its id (a new UUID unless given)."""
        rid = run_id or str(uuid.uuid4())
        at = _aware(started_at) if started_at is not None else self._now()

        def write(conn: Connection) -> None:
            self._ensure_client(conn, client, at)
            conn.execute(
                sa.insert(t.runs).values(
                    id=rid,
                    client=client,
                    job=job,
                    director=director,
                    started_at=at,
                    status=RunStatus.RUNNING.value,
                    window=window,
                )
            )

        self._write(write)
        return rid

    def finish_run(
        self,
        run_id: str,
        status: RunStatus | str,
        *,
        exit_code: int,
        counters: RunCounters | None = None,
        snapshot_id: str | None = None,
        message: str | None = None,
        log: str | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """Record how a run ended. A succeeded or warning run also marks its client seen.

        Raises KeyError for an unknown run id, ValueError for status ``running``.
        """
        final = RunStatus(status)
        if final not in FINISHED:
            raise ValueError(f"a run cannot finish as {final.value!r}")
        at = _aware(finished_at) if finished_at is not None else self._now()
        numbers = counters or RunCounters()

        def write(conn: Connection) -> None:
            result = conn.execute(
                sa.update(t.runs)
                .where(t.runs.c.id == run_id)
                .values(
                    finished_at=at,
                    status=final.value,
                    exit_code=exit_code,
                    bytes_read=numbers.bytes_read,
                    bytes_new=numbers.bytes_new,
                    bytes_stored=numbers.bytes_stored,
                    files=numbers.files,
                    warnings=numbers.warnings,
                    snapshot_id=snapshot_id,
                    message=message,
                    log=log,
                )
                .returning(t.runs.c.client)
            )
            client = result.scalar_one_or_none()
            if client is None:
                raise KeyError(run_id)
            if final is not RunStatus.FAILED:
                conn.execute(
                    sa.update(t.clients)
                    .where(t.clients.c.name == client, t.clients.c.last_seen < at)
                    .values(last_seen=at)
                )

        self._write(write)

    def get_run(self, run_id: str) -> Run | None:
        def read(conn: Connection) -> Run | None:
            row = conn.execute(sa.select(t.runs).where(t.runs.c.id == run_id)).first()
            return None if row is None else _run(row)

        return self._read(read)

    def window_success(self, client: str, job: str, window: str) -> Run | None:
        """The successful run (succeeded or warning) of this job in ``window``, if any."""
        r = t.runs
        query = (
            sa.select(*_run_columns(False))
            .where(
                r.c.client == client,
                r.c.job == job,
                r.c.window == window,
                r.c.status.in_([RunStatus.SUCCEEDED.value, RunStatus.WARNING.value]),
            )
            .order_by(r.c.finished_at.desc())
            .limit(1)
        )

        def read(conn: Connection) -> Run | None:
            row = conn.execute(query).first()
            return None if row is None else _run(row)

        return self._read(read)

    def lock_job(self, client: str, job: str) -> Callable[[], None] | None:
        """Take this job's lock for every director that shares the catalog; its release,
        or None when another director holds it. On PostgreSQL a session advisory lock,
        on a connection kept until the release: the server drops it when that session
        ends, so a director that dies never leaves it behind. SQLite lives on one
        machine, where the director's own flock is the lock: a release that does
        nothing."""
        if self._dialect != "postgresql":
            return lambda: None
        key = int.from_bytes(
            hashlib.blake2b(f"strongroom job\0{client}\0{job}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )

        def attempt() -> Connection | None:
            conn = self._engine.connect()
            try:
                held = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                got = bool(held.scalar())
                conn.commit()  # the lock is the session's, not the transaction's
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            if not got:
                conn.close()
                return None
            return conn

        conn = self._guard(attempt)
        if conn is None:
            return None

        def release() -> None:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except sa.exc.DBAPIError:
                conn.invalidate()  # its session ends, and the server drops the lock
            finally:
                conn.close()

        return release

    def running_runs(self, client: str, job: str) -> list[Run]:
        """The runs of this job the catalog records as still running, newest first."""
        r = t.runs
        query = (
            sa.select(*_run_columns(False))
            .where(r.c.client == client, r.c.job == job, r.c.status == RunStatus.RUNNING.value)
            .order_by(r.c.started_at.desc())
        )
        return self._read(lambda conn: [_run(row) for row in conn.execute(query)])

    def job_states(self) -> list[tuple[Run, datetime | None]]:
        """The last finished run of every (client, job), with the time its last
        successful (or warning) run finished; two grouped queries, no scan in Python."""
        r = t.runs
        last = (
            sa.select(r.c.client, r.c.job, sa.func.max(r.c.started_at).label("started"))
            .where(r.c.finished_at.is_not(None))
            .group_by(r.c.client, r.c.job)
            .subquery()
        )
        latest = sa.select(*_run_columns(False)).join(
            last,
            sa.and_(
                r.c.client == last.c.client,
                r.c.job == last.c.job,
                r.c.started_at == last.c.started,
                r.c.finished_at.is_not(None),
            ),
        )
        ok = [RunStatus.SUCCEEDED.value, RunStatus.WARNING.value]
        success = (
            sa.select(r.c.client, r.c.job, sa.func.max(r.c.finished_at).label("at"))
            .where(r.c.status.in_(ok))
            .group_by(r.c.client, r.c.job)
        )

        def read(conn: Connection) -> list[tuple[Run, datetime | None]]:
            runs = {(row.client, row.job): _run(row) for row in conn.execute(latest)}
            ats = {(row.client, row.job): row.at for row in conn.execute(success)}
            return [(runs[key], ats.get(key)) for key in sorted(runs)]

        return self._read(read)

    def last_runs(self, client: str | None = None, *, with_logs: bool = False) -> list[Run]:
        """The most recent run (by start time) of each client, or of one; one query."""
        latest = t.runs.alias("latest")
        latest_id = (
            sa.select(latest.c.id)
            .where(latest.c.client == t.clients.c.name)
            .order_by(latest.c.started_at.desc(), latest.c.id.desc())
            .limit(1)
            .correlate(t.clients)
            .scalar_subquery()
        )
        query = (
            sa.select(*_run_columns(with_logs))
            .select_from(t.clients.join(t.runs, t.runs.c.id == latest_id))
            .order_by(t.clients.c.name)
        )
        if client is not None:
            query = query.where(t.clients.c.name == client)
        return self._read(lambda conn: [_run(r) for r in conn.execute(query)])

    def stale_clients(
        self,
        now: datetime,
        max_age: timedelta,
        clients: Collection[str] | None = None,
        *,
        warning_counts: bool = True,
    ) -> list[StaleClient]:
        """Clients with no successful run finished within ``max_age`` before ``now``.

        ``clients`` is the fleet to judge (the configured clients): those the catalog
        has never heard of are stale with ``last_success`` None. Without it, every
        client in the catalog is judged. A run with warnings wrote its snapshot, so it
        counts as a success unless ``warning_counts`` is False.
        """
        ok = [RunStatus.SUCCEEDED.value]
        if warning_counts:
            ok.append(RunStatus.WARNING.value)
        cutoff = _aware(now) - max_age
        r = t.runs
        recent = (
            sa.exists()
            .where(r.c.client == t.clients.c.name, r.c.status.in_(ok), r.c.finished_at >= cutoff)
            .correlate(t.clients)
        )
        last = (
            sa.select(sa.func.max(r.c.finished_at))
            .where(r.c.client == t.clients.c.name, r.c.status.in_(ok))
            .correlate(t.clients)
            .scalar_subquery()
        )
        stale_query = sa.select(t.clients.c.name, last.label("last")).where(~recent)

        def read(conn: Connection) -> tuple[dict[str, datetime | None], set[str]]:
            stale = {row.name: row.last for row in conn.execute(stale_query)}
            known = set(conn.execute(sa.select(t.clients.c.name)).scalars())
            return stale, known

        stale, known = self._read(read)
        if clients is None:
            names: Iterable[str] = stale
        else:
            names = [n for n in clients if n in stale or n not in known]
        return [StaleClient(n, stale.get(n)) for n in sorted(set(names))]

    def runs_between(
        self,
        since: datetime,
        until: datetime,
        *,
        client: str | None = None,
        with_logs: bool = False,
    ) -> list[Run]:
        """Runs started at or after ``since`` and before ``until``, oldest first."""
        query = (
            sa.select(*_run_columns(with_logs))
            .where(t.runs.c.started_at >= _aware(since), t.runs.c.started_at < _aware(until))
            .order_by(t.runs.c.started_at, t.runs.c.id)
        )
        if client is not None:
            query = query.where(t.runs.c.client == client)
        return self._read(lambda conn: [_run(r) for r in conn.execute(query)])

    # -- snapshots and the path index --------------------------------------------------

    def record_snapshot(
        self,
        snapshot: SnapshotRecord,
        entries: Iterable[PathEntry],
        changes: Changes | None = None,
    ) -> bool:
        """Index a snapshot and its entries; False (and nothing changes) if already known.

        Each entry is compared with the previous snapshot of the same repository,
        client and job: unchanged entries cost nothing, changed ones add a row. With
        ``changes``, ``entries`` are only the new and changed ones against the base
        snapshot it names, which must be the lineage's last recorded one
        (BaseNotLatest otherwise, and nothing changes): the other paths' rows are not
        even read.
        """
        _aware(snapshot.time)
        index = _index_entries(entries)
        removed = {_path_hash(_storable(path)) for path in changes.removed} if changes else set()
        recorded_at = self._now()

        def write(conn: Connection) -> bool:
            if self._snapshot_exists(conn, snapshot.id):
                return False
            self._ensure_client(conn, snapshot.client, snapshot.time)
            lineage_id, seq = self._next_seq(conn, snapshot)
            if changes is not None and self._at_seq(conn, lineage_id, seq - 1) != changes.base:
                raise BaseNotLatest(changes.base)
            # Checked again under the lineage lock: a concurrent recorder may have won.
            if self._snapshot_exists(conn, snapshot.id):
                raise _AlreadyRecorded
            conn.execute(
                sa.insert(t.snapshots).values(
                    id=snapshot.id,
                    lineage_id=lineage_id,
                    seq=seq,
                    repository=snapshot.repository,
                    client=snapshot.client,
                    job=snapshot.job,
                    time=snapshot.time,
                    time_ns=snapshot.time_ns,
                    tree=snapshot.tree,
                    hostname=_storable(snapshot.hostname),
                    paths=[_storable(p) for p in snapshot.paths],
                    tags=[_storable(tag) for tag in snapshot.tags],
                    summary=snapshot.summary,
                    recorded_at=recorded_at,
                )
            )
            listed = None if changes is None else set(index) | removed
            fresh = self._close_changed(conn, lineage_id, seq, index, listed)
            path_ids = self._path_ids(conn, fresh)
            self._insert_rows(
                conn,
                t.path_versions.name,
                ("lineage_id", "path_id", "type", "size", "mtime_ns", "first_seq", "last_seq"),
                [
                    (lineage_id, path_ids[key], e.type, e.size, e.mtime_ns, seq, t.OPEN)
                    for key, e in fresh.items()
                ],
            )
            return True

        try:
            return self._write(write)
        except _AlreadyRecorded:
            return False
        except IntegrityError:
            # Lost a race for the same snapshot id on another path: fine if it is there.
            if self._read(lambda conn: self._snapshot_exists(conn, snapshot.id)):
                return False
            raise

    def forget_snapshot(self, snapshot_id: str) -> bool:
        """Remove a snapshot and the index rows only it used; False if it was unknown."""
        s, v = t.snapshots, t.path_versions

        def write(conn: Connection) -> bool:
            row = conn.execute(
                sa.select(s.c.lineage_id, s.c.seq).where(s.c.id == snapshot_id)
            ).first()
            if row is None:
                return False
            lineage_id, seq = row.lineage_id, row.seq
            # Lock the lineage: a concurrent record_snapshot must not close or read the
            # rows we drop, nor a concurrent forget judge them by the same old neighbours.
            conn.execute(
                sa.update(t.lineages)
                .where(t.lineages.c.id == lineage_id)
                .values(last_seq=t.lineages.c.last_seq)
            )
            in_lineage = s.c.lineage_id == lineage_id
            before = conn.execute(
                sa.select(sa.func.max(s.c.seq)).where(in_lineage, s.c.seq < seq)
            ).scalar()
            after = conn.execute(
                sa.select(sa.func.min(s.c.seq)).where(in_lineage, s.c.seq > seq)
            ).scalar()
            if conn.execute(sa.delete(s).where(s.c.id == snapshot_id)).rowcount == 0:
                return False  # forgotten meanwhile, by the writer we waited for
            # Rows spanning this snapshot and no other remaining one are now unused.
            only_here = [
                v.c.lineage_id == lineage_id,
                v.c.first_seq <= seq,
                v.c.last_seq >= seq,
            ]
            if before is not None:
                only_here.append(v.c.first_seq > before)
            if after is not None:
                only_here.append(v.c.last_seq < after)
            conn.execute(sa.delete(v).where(*only_here))
            return True

        return self._write(write)

    def forget_snapshots(self, snapshot_ids: Iterable[str]) -> int:
        """``forget_snapshot`` for each id (ids are unique across repositories), each in
        its own transaction; returns how many the catalog knew."""
        return sum(self.forget_snapshot(snapshot_id) for snapshot_id in snapshot_ids)

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        return self._snapshot_by(sa.select(t.snapshots).where(t.snapshots.c.id == snapshot_id))

    def _snapshot_by(self, query: sa.Select[Any]) -> SnapshotRecord | None:
        """The snapshot a query selects (its first row), or None."""

        def read(conn: Connection) -> SnapshotRecord | None:
            row = conn.execute(query).first()
            return None if row is None else _snapshot(row)

        return self._read(read)

    def snapshots(
        self,
        client: str | None = None,
        job: str | None = None,
        *,
        repository: str | None = None,
    ) -> list[SnapshotRecord]:
        """Snapshots, oldest first, narrowed by client, job and repository."""
        s = t.snapshots
        query = sa.select(s).order_by(s.c.time, s.c.id)
        if client is not None:
            query = query.where(s.c.client == client)
        if job is not None:
            query = query.where(s.c.job == job)
        if repository is not None:
            query = query.where(s.c.repository == repository)
        return self._read(lambda conn: [_snapshot(r) for r in conn.execute(query)])

    def find(
        self,
        pattern: str,
        *,
        client: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
        ignore_case: bool = False,
    ) -> list[FindHit]:
        """Entries whose name matches the glob ``pattern`` (whole path if it has a '/').

        One hit per snapshot containing the entry, newest snapshot first, at most
        ``limit``. With ``ignore_case``, names are compared lowercased (Unicode) and
        paths with SQL ``lower()`` (ASCII only on SQLite).
        """
        if not pattern:
            raise UsageError("find needs a pattern", hint="for example: find '*.conf'")
        p, v, s = t.paths, t.path_versions, t.snapshots
        conditions, narrow = self._pattern_conditions(pattern, ignore_case)
        # Query plans that do not depend on statistics (SQLite usually has none):
        # an indexed name drives the query; otherwise the client's rows do, when there
        # is a client; otherwise one pass over the distinct paths (``+paths.id`` keeps
        # SQLite from walking every row of every snapshot instead).
        path_id = p.c.id if narrow or client is not None else unindexed(p.c.id)
        query = (
            sa.select(
                s.c.id,
                s.c.repository,
                s.c.client,
                s.c.job,
                s.c.time,
                p.c.path,
                v.c.type,
                v.c.size,
                v.c.mtime_ns,
            )
            .select_from(p)
            .join(v, v.c.path_id == path_id)
            .join(
                s,
                sa.and_(
                    s.c.lineage_id == v.c.lineage_id,
                    s.c.seq >= v.c.first_seq,
                    s.c.seq <= v.c.last_seq,
                ),
            )
            .where(*conditions)
            .order_by(s.c.time.desc(), p.c.path, s.c.id)
            .limit(limit)
        )
        if client is not None:
            query = query.where(unindexed(s.c.client) == client)
            if not narrow:
                lineages = sa.select(t.lineages.c.id).where(t.lineages.c.client == client)
                query = query.where(v.c.lineage_id.in_(lineages))
        if since is not None:
            query = query.where(unindexed(s.c.time) >= _aware(since))

        def read(conn: Connection) -> list[FindHit]:
            return [
                FindHit(
                    snapshot_id=r.id,
                    repository=r.repository,
                    client=r.client,
                    job=r.job,
                    time=r.time,
                    path=r.path,
                    type=r.type,
                    size=r.size,
                    mtime=None if r.mtime_ns is None else ns_to_datetime(r.mtime_ns),
                )
                for r in conn.execute(query)
            ]

        return self._read(read)

    # -- markers -----------------------------------------------------------------------

    def set_marker(self, marker: Marker) -> None:
        """Record an upstream job's mark; it replaces the previous one of that name."""
        values = {
            "client": marker.client,
            "name": marker.name,
            "time": _aware(marker.time),
            "failed": marker.failed,
            "note": marker.note,
        }

        def write(conn: Connection) -> None:
            stmt = self._insert(t.markers).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.markers.c.client, t.markers.c.name],
                    set_={k: values[k] for k in ("time", "failed", "note")},
                )
            )

        self._write(write)

    def get_marker(self, client: str, name: str) -> Marker | None:
        m = t.markers
        query = sa.select(m).where(m.c.client == client, m.c.name == name)

        def read(conn: Connection) -> Marker | None:
            row = conn.execute(query).first()
            if row is None:
                return None
            return Marker(row.client, row.name, row.time, bool(row.failed), row.note)

        return self._read(read)

    # -- rebuild -----------------------------------------------------------------------

    def clear(self, *, keep_history: bool = True) -> None:
        """Empty what ``catalog rebuild`` recreates from repositories: snapshots and the
        path index. Without ``keep_history`` also runs, clients, markers and events,
        which exist nowhere else."""
        tables = [t.path_versions, t.paths, t.snapshots, t.lineages]
        if not keep_history:
            tables += [t.event_deliveries, t.events, t.markers, t.runs, t.clients]

        def write(conn: Connection) -> None:
            if self._dialect == "postgresql":
                names = ", ".join(table.name for table in tables)
                conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
            else:
                for table in tables:
                    conn.execute(sa.delete(table))

        self._write(write)

    # -- internals ---------------------------------------------------------------------

    def _now(self) -> datetime:
        return ns_to_datetime(self._clock.now_ns())

    def _insert(self, table: sa.Table) -> sqlite.Insert | pg.Insert:
        return pg.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    def _guard(self, attempt: Callable[[], T]) -> T:
        try:
            return with_retries(attempt)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            raise CatalogUnavailable(f"catalog {self._where}: {reason}") from exc

    def _read(self, read: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._engine.connect() as conn:
                return read(conn)

        return self._guard(attempt)

    def _write(self, write: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._write_engine.begin() as conn:
                return write(conn)

        return self._guard(attempt)

    def _ensure_client(self, conn: Connection, name: str, seen: datetime) -> None:
        conn.execute(
            self._insert(t.clients)
            .values(name=name, host=None, first_seen=seen, last_seen=seen)
            .on_conflict_do_nothing(index_elements=[t.clients.c.name])
        )

    def _snapshot_exists(self, conn: Connection, snapshot_id: str) -> bool:
        s = t.snapshots
        return conn.execute(sa.select(s.c.id).where(s.c.id == snapshot_id)).first() is not None

    def _next_seq(self, conn: Connection, snapshot: SnapshotRecord) -> tuple[int, int]:
        """The lineage's id and the next number in it. Holds the lineage's row lock until
        commit, so snapshots of one lineage are recorded one after the other."""
        lin = t.lineages
        key = (
            lin.c.repository == snapshot.repository,
            lin.c.client == snapshot.client,
            lin.c.job == snapshot.job,
        )
        conn.execute(
            self._insert(lin)
            .values(repository=snapshot.repository, client=snapshot.client, job=snapshot.job)
            .on_conflict_do_nothing(index_elements=[lin.c.repository, lin.c.client, lin.c.job])
        )
        row = conn.execute(
            sa.update(lin)
            .where(*key)
            .values(last_seq=lin.c.last_seq + 1)
            .returning(lin.c.id, lin.c.last_seq)
        ).one()
        return int(row.id), int(row.last_seq)

    @staticmethod
    def _at_seq(conn: Connection, lineage_id: int, seq: int) -> str | None:
        s = t.snapshots
        return conn.execute(
            sa.select(s.c.id).where(s.c.lineage_id == lineage_id, s.c.seq == seq)
        ).scalar()

    def lineage_head(self, repository: str, client: str, job: str) -> SnapshotRecord | None:
        """The last snapshot recorded in a lineage, if it is still there (not forgotten)."""
        s, lin = t.snapshots, t.lineages
        query = (
            sa.select(s)
            .join_from(s, lin, s.c.lineage_id == lin.c.id)
            .where(
                lin.c.repository == repository,
                lin.c.client == client,
                lin.c.job == job,
                s.c.seq == lin.c.last_seq,
            )
        )
        return self._snapshot_by(query)

    def _close_changed(
        self,
        conn: Connection,
        lineage_id: int,
        seq: int,
        index: dict[bytes, _Entry],
        listed: set[bytes] | None = None,
    ) -> dict[bytes, _Entry]:
        """Close the open rows of entries changed or gone since the lineage's previous
        snapshot (they end at ``seq - 1``); returns the entries that need new rows.

        Unchanged entries cost nothing: their rows are open and so already cover ``seq``.
        With ``listed`` (path hashes: the new and changed entries and the removed
        paths), only those paths' open rows are read; every other one stays as it is.
        """
        v, p = t.path_versions, t.paths
        query = (
            sa.select(v.c.id, p.c.path_hash, v.c.type, v.c.size, v.c.mtime_ns)
            .join_from(v, p, v.c.path_id == p.c.id)
            .where(v.c.lineage_id == lineage_id, v.c.last_seq == t.OPEN)
        )
        if listed is None:
            batches: Iterable[Iterable[Any]] = [conn.execute(query).all()]
        else:
            lookup = query.where(p.c.path_hash.in_(sa.bindparam("hashes", expanding=True)))
            batches = (
                conn.execute(lookup, {"hashes": list(chunk)}) for chunk in _chunks(sorted(listed))
            )
        fresh = dict(index)
        changed: list[int] = []
        for rows in batches:
            for row_id, path_hash, kind, size, mtime_ns in rows:
                key = bytes(path_hash)
                entry = fresh.get(key)
                if (
                    entry is not None
                    and entry.type == kind
                    and entry.size == size
                    and entry.mtime_ns == mtime_ns
                ):
                    del fresh[key]
                else:
                    changed.append(row_id)
        close = (
            sa.update(v)
            .where(v.c.id.in_(sa.bindparam("ids", expanding=True)))
            .values(last_seq=seq - 1)
        )
        for ids in _chunks(changed):
            conn.execute(close, {"ids": ids})
        return fresh

    def _path_ids(self, conn: Connection, entries: dict[bytes, _Entry]) -> dict[bytes, int]:
        """Ids of the entries' paths, adding the paths not yet known."""
        # Sorted, so concurrent writers take the unique-index locks in the same order.
        hashes = sorted(entries)
        ids = self._lookup_paths(conn, hashes)
        missing = [h for h in hashes if h not in ids]
        if missing:
            if self._dialect == "postgresql":
                # One statement of four arrays: a row costs the server an element, not a
                # statement (COPY cannot skip the paths a concurrent writer just added).
                conn.exec_driver_sql(
                    f"INSERT INTO {t.paths.name} (path_hash, path, name, name_lc) "
                    "SELECT * FROM unnest(%s::bytea[], %s::text[], %s::text[], %s::text[]) "
                    "ON CONFLICT (path_hash) DO NOTHING",
                    (
                        missing,
                        [entries[h].path for h in missing],
                        [entries[h].name for h in missing],
                        [entries[h].name.lower() for h in missing],
                    ),
                )
            else:
                self._driver_many(
                    conn,
                    f"INSERT INTO {t.paths.name} (path_hash, path, name, name_lc) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (path_hash) DO NOTHING",
                    [
                        (h, entries[h].path, entries[h].name, entries[h].name.lower())
                        for h in missing
                    ],
                )
            ids.update(self._lookup_paths(conn, missing))
        return ids

    def _lookup_paths(self, conn: Connection, hashes: Sequence[bytes]) -> dict[bytes, int]:
        ids: dict[bytes, int] = {}
        if self._dialect == "postgresql":  # one array parameter: nothing to parse per id
            sql = f"SELECT path_hash, id FROM {t.paths.name} WHERE path_hash = ANY(%s)"
            for start in range(0, len(hashes), 10 * CHUNK):
                rows = conn.exec_driver_sql(sql, (list(hashes[start : start + 10 * CHUNK]),))
                ids.update((bytes(h), i) for h, i in rows)
            return ids
        for chunk in _chunks(hashes):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT path_hash, id FROM {t.paths.name} WHERE path_hash IN ({marks})"
            ids.update((bytes(h), i) for h, i in conn.exec_driver_sql(sql, tuple(chunk)))
        return ids

    def _insert_rows(
        self, conn: Connection, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert ``rows`` into ``table``: with COPY on PostgreSQL (in the transaction,
        through psycopg's raw connection; one stream instead of a statement per row),
        else with ``_driver_many``."""
        if not rows:
            return
        names = ", ".join(columns)
        if self._dialect == "postgresql":
            raw = conn.connection.driver_connection
            assert raw is not None  # a connection checked out of the pool
            with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join("?" * len(columns))
        self._driver_many(conn, f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def _driver_many(self, conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``executemany`` straight to SQLite's driver (PostgreSQL takes rows with COPY
        or arrays: ``_insert_rows``, ``_path_ids``): for tens of thousands of rows,
        SQLAlchemy's processing of each row's parameters cost more than the inserts (a
        first record of 49,000 paths: 2.5 s on SQLite, most of it there)."""
        if rows:
            conn.exec_driver_sql(sql, rows)

    def _pattern_conditions(
        self, pattern: str, ignore_case: bool
    ) -> tuple[list[sa.ColumnElement[bool]], bool]:
        """The conditions on ``paths`` for a pattern, and whether an index serves them."""
        p = t.paths
        glob = parse_glob(pattern)
        if "/" in pattern:
            conditions: list[sa.ColumnElement[bool]] = []
            name = _trailing_name(glob)
            if name is not None:  # the pattern ends in "/NAME": use the name index
                conditions.append(p.c.name_lc == name.lower())
                if not ignore_case:
                    conditions.append(p.c.name == name)
            if glob.literal is not None and not ignore_case:
                conditions.append(p.c.path_hash == _path_hash(_storable(glob.literal)))
            elif ignore_case:
                conditions.append(self._glob_match(sa.func.lower(p.c.path), glob.lower()))
            else:
                conditions.append(self._glob_match(p.c.path, glob))
            return conditions, name is not None or glob.literal is not None
        # name_lc carries the index for both cases: equal names have equal lowercase
        # names, and a name starting with P starts, lowercased, with P lowercased.
        if glob.literal is not None:
            literal = glob.literal
            if ignore_case:
                return [p.c.name_lc == literal.lower()], True
            return [p.c.name_lc == literal.lower(), p.c.name == literal], True
        if ignore_case:
            conditions = [self._glob_match(p.c.name_lc, glob.lower())]
        else:
            conditions = [self._glob_match(p.c.name, glob)]
        prefix = glob.prefix.lower()
        if prefix:
            conditions.append(p.c.name_lc >= prefix)
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                conditions.append(p.c.name_lc < upper)
        return conditions, bool(prefix)

    def _glob_match(self, column: sa.ColumnElement[str], glob: Glob) -> sa.ColumnElement[bool]:
        if self._dialect == "postgresql":
            return column.op("~", is_comparison=True)(glob.regex())
        return column.op("GLOB", is_comparison=True)(glob.sqlite_glob())


# -- helpers ---------------------------------------------------------------------------


def ns_to_datetime(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: datetime) -> int:
    delta = _aware(value) - EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"catalog times must be timezone-aware, got {value!r}")
    return value


def _storable(text: str) -> str:
    """Text both databases accept: non-UTF-8 bytes (surrogate escapes) and NUL become
    backslash escapes, so an odd file name is indexed rather than refused."""
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _path_hash(path: str) -> bytes:
    return hashlib.blake2b(path.encode("utf-8"), digest_size=16).digest()


def _index_entries(entries: Iterable[PathEntry]) -> dict[bytes, _Entry]:
    index: dict[bytes, _Entry] = {}
    for entry in entries:
        path = _storable(entry.path)
        key = _path_hash(path)
        if key in index:
            continue
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        mtime = None if entry.mtime is None else datetime_to_ns(entry.mtime)
        index[key] = _Entry(path, name, entry.type, entry.size, mtime)
    return index


def _trailing_name(glob: Glob) -> str | None:
    """NAME when the pattern ends with a literal "/NAME", else None."""
    if not glob.tokens:
        return None
    kind, text = glob.tokens[-1]
    if kind != "lit" or "/" not in text:
        return None
    name = text.rsplit("/", 1)[1]
    return name or None


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _run_columns(with_logs: bool) -> list[sa.Column[Any]]:
    return [c for c in t.runs.c if with_logs or c.name != "log"]


def _run(row: Row[Any]) -> Run:
    fields = row._mapping
    return Run(
        id=fields["id"],
        client=fields["client"],
        job=fields["job"],
        director=fields["director"],
        started_at=fields["started_at"],
        finished_at=fields["finished_at"],
        status=RunStatus(fields["status"]),
        exit_code=fields["exit_code"],
        counters=RunCounters(
            bytes_read=fields["bytes_read"],
            bytes_new=fields["bytes_new"],
            bytes_stored=fields["bytes_stored"],
            files=fields["files"],
            warnings=fields["warnings"],
        ),
        snapshot_id=fields["snapshot_id"],
        window=fields["window"],
        message=fields["message"],
        log=fields.get("log"),
    )


def _snapshot(row: Row[Any]) -> SnapshotRecord:
    time_ns = row.time_ns if row.time_ns is not None else datetime_to_ns(row.time)
    return SnapshotRecord(
        id=row.id,
        repository=row.repository,
        client=row.client,
        job=row.job,
        time=row.time,
        tree=row.tree,
        paths=list(row.paths),
        tags=list(row.tags),
        summary=dict(row.summary),
        hostname=row.hostname,
        time_ns=time_ns,
    )
