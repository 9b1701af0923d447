"""Many runs writing at once: threads of one director, and processes as several directors."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from strongroom.catalog import Catalog, PathEntry, RunCounters, RunStatus, SnapshotRecord, database

NIGHT = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
WRITERS = 8
NIGHTS = 3
SHARED = [PathEntry(f"/usr/lib/os/file{i:03d}", "file", i, NIGHT) for i in range(150)]


def director_night(url: str, director: str, clients: list[str]) -> None:
    """What one director does for its clients: runs, each recording a snapshot."""
    with Catalog.open(url) as catalog:
        for night in range(NIGHTS):
            for client in clients:
                started = NIGHT + timedelta(days=night)
                run_id = catalog.start_run(client, "default", director=director, started_at=started)
                own = [
                    PathEntry(f"/home/{client}/doc{i:03d}", "file", night * (i % 3), started)
                    for i in range(60)
                ]
                snapshot_id = f"{client}-{night}"
                catalog.record_snapshot(
                    SnapshotRecord(
                        id=snapshot_id,
                        repository="main",
                        client=client,
                        job="default",
                        time=started + timedelta(minutes=5),
                        tree="0" * 64,
                    ),
                    # New clients' first snapshots all add the same shared paths at once.
                    [*SHARED, *own],
                )
                catalog.finish_run(
                    run_id,
                    RunStatus.SUCCEEDED,
                    exit_code=0,
                    counters=RunCounters(files=len(SHARED) + len(own)),
                    snapshot_id=snapshot_id,
                    finished_at=started + timedelta(minutes=6),
                )


def check_fleet(catalog: Catalog, clients: list[str]) -> None:
    last = catalog.last_runs()
    assert sorted(r.client for r in last) == sorted(clients)
    assert all(r.status is RunStatus.SUCCEEDED and r.snapshot_id for r in last)
    assert len(catalog.snapshots()) == len(clients) * NIGHTS
    assert len(catalog.find("file007", limit=10**6)) == len(clients) * NIGHTS
    assert len(catalog.find("doc001", limit=10**6)) == len(clients) * NIGHTS
    assert catalog.stale_clients(NIGHT + timedelta(days=NIGHTS), timedelta(days=1), clients) == []


def test_threads_write_runs_and_snapshots_at_once(catalog_url: str) -> None:
    Catalog.open(catalog_url, auto_migrate=True).close()
    clients = [f"client{i:02d}" for i in range(WRITERS * 2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(WRITERS)

    def work(mine: list[str]) -> None:
        try:
            barrier.wait()
            director_night(catalog_url, "director-1", mine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(clients[i::WRITERS],)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Catalog.open(catalog_url) as catalog:
        check_fleet(catalog, clients)


@pytest.mark.timeout(120)
def test_several_directors_share_one_catalog(catalog_url: str) -> None:
    Catalog.open(catalog_url, auto_migrate=True).close()
    clients = [f"host{i:02d}" for i in range(12)]
    context = multiprocessing.get_context("spawn")
    directors = [
        context.Process(target=director_night, args=(catalog_url, f"director-{i}", clients[i::4]))
        for i in range(4)
    ]
    for process in directors:
        process.start()
    for process in directors:
        process.join(100)
    assert [p.exitcode for p in directors] == [0, 0, 0, 0]
    with Catalog.open(catalog_url) as catalog:
        check_fleet(catalog, clients)
        assert {r.director for r in catalog.last_runs()} == {f"director-{i}" for i in range(4)}


def test_concurrent_migrations_of_one_catalog_agree(catalog_url: str) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            Catalog.open(catalog_url, auto_migrate=True).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Catalog.open(catalog_url) as catalog:
        assert catalog.snapshots() == []


@pytest.mark.timeout(60)
def test_a_writer_waits_for_a_held_sqlite_lock_instead_of_failing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url, auto_migrate=True) as catalog:
        holder = sqlite3.connect(
            tmp_path / "catalog.db", isolation_level=None, check_same_thread=False
        )
        holder.execute("BEGIN IMMEDIATE")
        holder.execute(
            "INSERT INTO markers VALUES ('c', 'n', '2026-01-01 00:00:00.000000', 0, NULL)"
        )
        release = threading.Timer(0.5, holder.execute, args=("COMMIT",))
        release.start()
        try:
            run_id = catalog.start_run("c", "default", director="d", started_at=NIGHT)
        finally:
            release.join()
            holder.close()
        assert catalog.get_run(run_id) is not None
        assert catalog.get_marker("c", "n") is not None


class FakeDriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (sa.exc.OperationalError("BEGIN", {}, FakeDriverError("database is locked")), True),
        (sa.exc.OperationalError("X", {}, FakeDriverError("deadlock detected", "40P01")), True),
        (sa.exc.DBAPIError("X", {}, FakeDriverError("could not serialize", "40001")), True),
        (sa.exc.OperationalError("X", {}, FakeDriverError("disk I/O error")), False),
        (sa.exc.IntegrityError("X", {}, FakeDriverError("UNIQUE constraint failed")), False),
    ],
)
def test_only_lost_lock_races_are_retried(
    error: sa.exc.DBAPIError, retried: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("strongroom.catalog.database.time.sleep", lambda seconds: None)
    attempts: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise error
        return "done"

    if retried:
        assert database.with_retries(attempt) == "done"
        assert len(attempts) == 3
    else:
        with pytest.raises(type(error)):
            database.with_retries(attempt)
        assert len(attempts) == 1


def test_retries_give_up_in_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("strongroom.catalog.database.time.sleep", lambda seconds: None)
    locked = sa.exc.OperationalError("X", {}, FakeDriverError("database is locked"))

    def attempt() -> None:
        raise locked

    with pytest.raises(sa.exc.OperationalError):
        database.with_retries(attempt, attempts=4)


def test_forgets_and_records_in_one_lineage_at_once_keep_the_index_exact(
    catalog: Catalog,
) -> None:
    def entries(night: int) -> list[PathEntry]:
        # Half the files change every other night, one file only exists on odd nights.
        files = [PathEntry(f"/f{i}", "file", (night // 2) * (i % 2), NIGHT) for i in range(10)]
        return files + ([PathEntry("/odd", "file")] if night % 2 else [])

    def record(night: int) -> None:
        catalog.record_snapshot(
            SnapshotRecord(
                id=f"n{night:02d}",
                repository="main",
                client="web1",
                job="default",
                time=NIGHT + timedelta(days=night),
                tree="0" * 64,
            ),
            entries(night),
        )

    for night in range(16):
        record(night)
    forgotten = [n for n in range(16) if n % 3 != 0]
    errors: list[BaseException] = []

    def work(job: list[int], action: str) -> None:
        try:
            for night in job:
                if action == "forget":
                    catalog.forget_snapshot(f"n{night:02d}")
                else:
                    record(night)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(forgotten[i::3], "forget")) for i in range(3)]
    threads.append(threading.Thread(target=work, args=(list(range(16, 22)), "record")))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    live = [n for n in range(22) if n not in forgotten]
    expected = sorted((f"n{n:02d}", e.path, e.size) for n in live for e in entries(n))
    found = catalog.find("*", limit=10**6)
    assert sorted((h.snapshot_id, h.path, h.size) for h in found) == expected
