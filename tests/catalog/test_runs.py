"""Clients and runs: the lifecycle, the last run of each client, stale clients, reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from strongroom.catalog import Catalog, RunCounters, RunStatus, StaleClient
from strongroom.clock import FakeClock

NIGHT = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)


def run(
    catalog: Catalog,
    client: str,
    started: datetime,
    status: RunStatus = RunStatus.SUCCEEDED,
    *,
    job: str = "default",
    minutes: int = 10,
) -> str:
    run_id = catalog.start_run(client, job, director="director-1", started_at=started)
    catalog.finish_run(
        run_id,
        status,
        exit_code={"succeeded": 0, "warning": 3, "failed": 1}[status],
        finished_at=started + timedelta(minutes=minutes),
    )
    return run_id


@contextmanager
def statements(catalog: Catalog) -> Iterator[list[str]]:
    """The SQL statements the catalog sends while the block runs."""
    seen: list[str] = []

    def record(conn: object, cursor: object, sql: str, *args: object) -> None:
        if not sql.lstrip().upper().startswith(("BEGIN", "PRAGMA")):
            seen.append(sql)

    sa.event.listen(catalog._engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(catalog._engine, "before_cursor_execute", record)


def test_a_run_is_recorded_from_start_to_finish(catalog: Catalog) -> None:
    run_id = catalog.start_run(
        "dracula", "sql", director="director-1", started_at=NIGHT, window="2026-11-25"
    )
    started = catalog.get_run(run_id)
    assert started is not None
    assert started.status is RunStatus.RUNNING
    assert (started.client, started.job, started.director) == ("dracula", "sql", "director-1")
    assert started.started_at == NIGHT and started.started_at.tzinfo is not None
    assert started.finished_at is None and started.exit_code is None
    assert started.window == "2026-11-25"

    counters = RunCounters(bytes_read=5 << 30, bytes_new=123, bytes_stored=77, files=9, warnings=2)
    catalog.finish_run(
        run_id,
        "warning",
        exit_code=3,
        counters=counters,
        snapshot_id="ab" * 32,
        message="2 files could not be read",
        log="line 1\nline 2\n",
        finished_at=NIGHT + timedelta(minutes=7, microseconds=5),
    )
    done = catalog.get_run(run_id)
    assert done is not None
    assert done.status is RunStatus.WARNING and done.exit_code == 3
    assert done.counters == counters
    assert done.snapshot_id == "ab" * 32
    assert done.message == "2 files could not be read"
    assert done.log == "line 1\nline 2\n"
    assert done.duration == timedelta(minutes=7, microseconds=5)
    assert catalog.get_run("no-such-run") is None


def test_times_in_other_zones_come_back_as_the_same_instant_in_utc(catalog: Catalog) -> None:
    paris = datetime(2026, 11, 25, 3, 0, tzinfo=ZoneInfo("Europe/Paris"))
    run_id = catalog.start_run("dracula", "default", director="d", started_at=paris)
    got = catalog.get_run(run_id)
    assert got is not None
    assert got.started_at == paris
    assert got.started_at.utcoffset() == timedelta(0)


def test_default_times_come_from_the_clock(catalog: Catalog, clock: FakeClock) -> None:
    run_id = catalog.start_run("dracula", "default", director="d")
    clock.advance(90)
    catalog.finish_run(run_id, RunStatus.SUCCEEDED, exit_code=0)
    got = catalog.get_run(run_id)
    assert got is not None and got.duration == timedelta(seconds=90)
    assert got.started_at == datetime.fromtimestamp(1_764_028_800, UTC)


def test_bad_finishes_are_refused(catalog: Catalog) -> None:
    run_id = catalog.start_run("dracula", "default", director="d", started_at=NIGHT)
    with pytest.raises(KeyError):
        catalog.finish_run("no-such-run", "failed", exit_code=1)
    with pytest.raises(ValueError, match="cannot finish"):
        catalog.finish_run(run_id, "running", exit_code=0)
    with pytest.raises(ValueError):
        catalog.finish_run(run_id, "exploded", exit_code=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.start_run("dracula", "default", director="d", started_at=datetime(2026, 1, 1))


def test_last_runs_gives_each_clients_latest_run_in_one_query(catalog: Catalog) -> None:
    expected = {}
    for i, client in enumerate(["alpha", "bravo", "charlie"]):
        for day in range(4):
            status = RunStatus.FAILED if (i + day) % 3 == 0 else RunStatus.SUCCEEDED
            expected[client] = run(catalog, client, NIGHT + timedelta(days=day, minutes=i), status)
    still_running = catalog.start_run(
        "charlie", "default", director="d", started_at=NIGHT + timedelta(days=9)
    )
    expected["charlie"] = still_running
    catalog.upsert_client("delta", host="delta.example.com")  # never ran: not listed

    with statements(catalog) as sql:
        last = catalog.last_runs()
    assert len(sql) == 1
    assert [(r.client, r.id) for r in last] == sorted(expected.items())
    assert last[2].status is RunStatus.RUNNING
    assert all(r.log is None for r in last)

    (only,) = catalog.last_runs("bravo")
    assert only.id == expected["bravo"]
    assert catalog.last_runs("delta") == []


def test_last_runs_reads_logs_only_when_asked(catalog: Catalog) -> None:
    run_id = catalog.start_run("alpha", "default", director="d", started_at=NIGHT)
    catalog.finish_run(run_id, "succeeded", exit_code=0, log="all good", finished_at=NIGHT)
    assert catalog.last_runs()[0].log is None
    assert catalog.last_runs(with_logs=True)[0].log == "all good"


def test_stale_clients_include_those_that_never_ran(catalog: Catalog) -> None:
    now = NIGHT + timedelta(days=10)
    run(catalog, "fresh", now - timedelta(hours=20))
    run(catalog, "old", now - timedelta(days=3))
    run(catalog, "old", now - timedelta(hours=2), RunStatus.FAILED)  # a failure is no backup
    run(catalog, "warned", now - timedelta(hours=5), RunStatus.WARNING)
    catalog.start_run("started", "default", director="d", started_at=now - timedelta(hours=1))
    catalog.upsert_client("known", seen_at=now)

    stale = catalog.stale_clients(now, timedelta(days=1))
    old_success = now - timedelta(days=3) + timedelta(minutes=10)
    assert stale == [
        StaleClient("known", None),
        StaleClient("old", old_success),
        StaleClient("started", None),
    ]

    fleet = ["fresh", "old", "warned", "never-seen", "started"]
    assert catalog.stale_clients(now, timedelta(days=1), fleet) == [
        StaleClient("never-seen", None),
        StaleClient("old", old_success),
        StaleClient("started", None),
    ]
    strict = catalog.stale_clients(now, timedelta(days=1), ["warned"], warning_counts=False)
    assert strict == [StaleClient("warned", None)]
    assert catalog.stale_clients(now, timedelta(days=4), ["old", "fresh"]) == []


def test_runs_between_lists_a_nights_runs_oldest_first(catalog: Catalog) -> None:
    ids = [run(catalog, f"c{i}", NIGHT + timedelta(hours=i)) for i in range(6)]
    got = catalog.runs_between(NIGHT + timedelta(hours=1), NIGHT + timedelta(hours=4))
    assert [r.id for r in got] == ids[1:4]
    assert [r.id for r in catalog.runs_between(NIGHT, NIGHT + timedelta(days=1), client="c5")] == [
        ids[5]
    ]
    assert all(r.log is None for r in got)
    assert all(r.log is None for r in catalog.runs_between(NIGHT, NIGHT, with_logs=True))


def test_clients_are_upserted_and_seen_by_successful_runs(catalog: Catalog) -> None:
    catalog.upsert_client("dracula", host="dracula.corp", seen_at=NIGHT)
    catalog.upsert_client("dracula", seen_at=NIGHT - timedelta(days=1))  # older: ignored
    (client,) = catalog.clients()
    assert (client.name, client.host) == ("dracula", "dracula.corp")
    assert client.first_seen == client.last_seen == NIGHT

    run(catalog, "dracula", NIGHT + timedelta(days=1), RunStatus.FAILED)
    assert catalog.clients()[0].last_seen == NIGHT
    run(catalog, "dracula", NIGHT + timedelta(days=2))
    assert catalog.clients()[0].last_seen == NIGHT + timedelta(days=2, minutes=10)
    catalog.upsert_client("dracula", host="dracula.new", seen_at=NIGHT + timedelta(days=3))
    (client,) = catalog.clients()
    assert client.host == "dracula.new" and client.last_seen == NIGHT + timedelta(days=3)
