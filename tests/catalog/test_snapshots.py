"""Snapshots and the path index: recording, finding, forgetting, rebuilding."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from strongroom.catalog import BaseNotLatest, Catalog, Changes, FindHit, PathEntry, SnapshotRecord
from strongroom.catalog.schema import path_versions, paths
from strongroom.errors import UsageError

DAY0 = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
MTIME = datetime(2026, 10, 1, 12, 30, 15, 123456, tzinfo=UTC)


def snap(
    snapshot_id: str, client: str, day: int, *, job: str = "default", repository: str = "main"
) -> SnapshotRecord:
    return SnapshotRecord(
        id=snapshot_id,
        repository=repository,
        client=client,
        job=job,
        time=DAY0 + timedelta(days=day),
        tree="f" * 64,
        paths=["/etc", "/home"],
        tags=["nightly"],
        summary={"files_new": 3, "bytes_new": 1024},
    )


def file(path: str, size: int = 100, mtime: datetime = MTIME) -> PathEntry:
    return PathEntry(path, "file", size, mtime)


BASE = [
    PathEntry("/etc", "dir", 0, MTIME),
    file("/etc/hosts", 220),
    file("/etc/hostname", 7),
    PathEntry("/etc/localtime", "symlink", 0, MTIME),
    PathEntry("/home", "dir"),
    file("/home/ann/Report.PDF", 5000),
    file("/home/ann/notes.txt", 30),
    file("/srv/data/x[1].txt", 1),
    file("/srv/data/na*me", 2),
    file("/var/log/app.log", 0),
]


def fleet(catalog: Catalog) -> None:
    """web1 and web2, three nights each; app.log grows nightly, web2 has no Report."""
    for day in range(3):
        for client in ("web1", "web2"):
            entries = [e for e in BASE if client == "web1" or "Report" not in e.path]
            entries = [
                file(e.path, 1000 * day, DAY0 + timedelta(days=day)) if "app.log" in e.path else e
                for e in entries
            ]
            assert catalog.record_snapshot(snap(f"{client}-{day}", client, day), entries)


def hits(found: list[FindHit]) -> list[tuple[str, str]]:
    return [(h.snapshot_id, h.path) for h in found]


def count(catalog: Catalog, table: sa.Table) -> int:
    with catalog._engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_snapshot_is_recorded_once(catalog: Catalog) -> None:
    record = snap("a1", "web1", 0)
    assert catalog.record_snapshot(record, BASE) is True
    rows = count(catalog, path_versions)
    assert catalog.record_snapshot(record, BASE) is False
    assert catalog.record_snapshot(record, BASE[:2]) is False
    assert count(catalog, path_versions) == rows == len(BASE)
    (got,) = catalog.snapshots()
    assert got == SnapshotRecord(
        id="a1",
        repository="main",
        client="web1",
        job="default",
        time=record.time,
        tree="f" * 64,
        paths=["/etc", "/home"],
        tags=["nightly"],
        summary={"files_new": 3, "bytes_new": 1024},
        time_ns=int(record.time.timestamp()) * 10**9,
    )
    assert catalog.get_snapshot("a1") == got
    assert catalog.get_snapshot("zz") is None


def test_nanosecond_snapshot_times_are_kept(catalog: Catalog) -> None:
    record = snap("ns", "web1", 0)
    exact = int(record.time.timestamp()) * 10**9 + 123_456_789
    catalog.record_snapshot(SnapshotRecord(**{**record.__dict__, "time_ns": exact}), [file("/a")])
    assert catalog.snapshots()[0].time_ns == exact


def test_unchanged_entries_add_no_rows(catalog: Catalog) -> None:
    entries = [file(f"/data/f{i:03d}", i) for i in range(100)]
    for day in range(5):
        entries[day] = file(entries[day].path, 999)  # one file changes each night
        catalog.record_snapshot(snap(f"s{day}", "web1", day), entries)
    assert count(catalog, path_versions) == 100 + 4
    assert count(catalog, paths) == 100
    assert len(catalog.find("f00*", limit=10_000)) == 5 * 10


def test_snapshots_are_listed_oldest_first_and_filtered(catalog: Catalog) -> None:
    fleet(catalog)
    catalog.record_snapshot(snap("db-0", "web1", 1, job="sql", repository="vault"), BASE[:1])
    assert [s.id for s in catalog.snapshots()] == [
        "web1-0", "web2-0", "db-0", "web1-1", "web2-1", "web1-2", "web2-2",
    ]  # fmt: skip
    assert [s.id for s in catalog.snapshots(client="web2")] == ["web2-0", "web2-1", "web2-2"]
    assert [s.id for s in catalog.snapshots(job="sql")] == ["db-0"]
    assert [s.id for s in catalog.snapshots("web1", "default", repository="main")] == [
        "web1-0", "web1-1", "web1-2",
    ]  # fmt: skip
    assert catalog.snapshots(repository="elsewhere") == []


def test_find_by_name_newest_snapshot_first(catalog: Catalog) -> None:
    fleet(catalog)
    found = catalog.find("hosts")
    assert hits(found) == [
        ("web1-2", "/etc/hosts"), ("web2-2", "/etc/hosts"),
        ("web1-1", "/etc/hosts"), ("web2-1", "/etc/hosts"),
        ("web1-0", "/etc/hosts"), ("web2-0", "/etc/hosts"),
    ]  # fmt: skip
    first = found[0]
    assert (first.client, first.job, first.repository) == ("web1", "default", "main")
    assert first.time == DAY0 + timedelta(days=2)
    assert (first.type, first.size, first.mtime) == ("file", 220, MTIME)
    assert catalog.find("host") == []
    assert catalog.find("HOSTS") == []


def test_find_reports_each_version_in_its_own_snapshots(catalog: Catalog) -> None:
    fleet(catalog)
    found = catalog.find("app.log", client="web2")
    assert [(h.snapshot_id, h.size, h.mtime) for h in found] == [
        ("web2-2", 2000, DAY0 + timedelta(days=2)),
        ("web2-1", 1000, DAY0 + timedelta(days=1)),
        ("web2-0", 0, DAY0),
    ]


def test_find_globs_on_names(catalog: Catalog) -> None:
    fleet(catalog)
    latest = DAY0 + timedelta(days=2)

    def names(pattern: str, ignore_case: bool = False) -> set[str]:
        return {h.path for h in catalog.find(pattern, since=latest, ignore_case=ignore_case)}

    assert names("host*") == {"/etc/hosts", "/etc/hostname"}
    assert names("host?") == {"/etc/hosts"}
    assert names("*.txt") == {"/home/ann/notes.txt", "/srv/data/x[1].txt"}
    assert names("[rn]*") == {"/home/ann/notes.txt", "/srv/data/na*me"}
    assert names("[!a-z]*") == {"/home/ann/Report.PDF"}
    assert names("x[[]1].txt") == {"/srv/data/x[1].txt"}
    assert names("na[*]me") == {"/srv/data/na*me"}
    assert names("*.pdf") == set()
    assert names("*.pdf", ignore_case=True) == {"/home/ann/Report.PDF"}
    assert names("REPORT.pdf", ignore_case=True) == {"/home/ann/Report.PDF"}
    assert names("*") == {e.path for e in BASE}


def test_find_on_whole_paths_when_the_pattern_has_a_slash(catalog: Catalog) -> None:
    fleet(catalog)
    latest = DAY0 + timedelta(days=2)

    def found(pattern: str, ignore_case: bool = False) -> set[str]:
        return {h.path for h in catalog.find(pattern, since=latest, ignore_case=ignore_case)}

    assert found("/etc/hosts") == {"/etc/hosts"}
    assert found("/etc/host*") == {"/etc/hosts", "/etc/hostname"}
    assert found("/home/*") == {"/home/ann/Report.PDF", "/home/ann/notes.txt"}
    assert found("*/ann/*.txt") == {"/home/ann/notes.txt"}
    assert found("/*/hostname") == {"/etc/hostname"}
    assert found("/home/ann/report.pdf") == set()
    assert found("/HOME/ann/report.pdf", ignore_case=True) == {"/home/ann/Report.PDF"}
    assert found("/HOME/*.PDF", ignore_case=True) == {"/home/ann/Report.PDF"}
    assert found("etc/hosts") == set()


def test_find_narrowed_by_client_since_and_limit(catalog: Catalog) -> None:
    fleet(catalog)
    assert hits(catalog.find("Report.PDF")) == [
        ("web1-2", "/home/ann/Report.PDF"),
        ("web1-1", "/home/ann/Report.PDF"),
        ("web1-0", "/home/ann/Report.PDF"),
    ]
    assert catalog.find("Report.PDF", client="web2") == []
    assert [h.snapshot_id for h in catalog.find("hostname", client="web2")] == [
        "web2-2",
        "web2-1",
        "web2-0",
    ]
    since = DAY0 + timedelta(days=1)
    assert {h.snapshot_id for h in catalog.find("hostname", since=since)} == {
        "web1-1", "web2-1", "web1-2", "web2-2",
    }  # fmt: skip
    assert [h.snapshot_id for h in catalog.find("*", client="web2", limit=2)] == [
        "web2-2",
        "web2-2",
    ]
    assert len(catalog.find("*.txt", client="web1", since=since)) == 4
    with pytest.raises(UsageError):
        catalog.find("")


def test_odd_file_names_are_indexed(catalog: Catalog) -> None:
    long_path = "/deep" + "/" + "d" * 250 + ("/" + "e" * 250) * 15 + "/leaf.bin"
    entries = [
        file("/data/caf\udce9.txt"),  # a non-UTF-8 byte, as os.fsdecode gives it
        file("/data/zero\x00byte"),
        file("/data/snow\u2603man"),
        file(long_path),
        PathEntry("/", "dir"),
    ]
    assert catalog.record_snapshot(snap("odd", "web1", 0), entries)
    assert {h.path for h in catalog.find("caf*")} == {"/data/caf\\xe9.txt"}
    assert {h.path for h in catalog.find("zero*")} == {"/data/zero\\x00byte"}
    assert {h.path for h in catalog.find("SNOW\u2603MAN", ignore_case=True)} == {
        "/data/snow\u2603man"
    }
    assert {h.path for h in catalog.find("leaf.bin")} == {long_path}
    assert {h.path for h in catalog.find(long_path)} == {long_path}
    assert {h.path for h in catalog.find("/")} == {"/"}
    # The same snapshot recorded again is still a no-op with odd names.
    assert not catalog.record_snapshot(snap("odd", "web1", 0), entries)


def test_forget_removes_a_snapshot_and_only_its_own_rows(catalog: Catalog) -> None:
    entries = [file("/keep"), file("/middle-only"), file("/changes", 0)]
    catalog.record_snapshot(snap("s0", "web1", 0), [entries[0], entries[2]])
    catalog.record_snapshot(snap("s1", "web1", 1), [*entries[:2], file("/changes", 1)])
    catalog.record_snapshot(snap("s2", "web1", 2), [entries[0], file("/changes", 2)])
    assert count(catalog, path_versions) == 5

    assert catalog.forget_snapshot("s1") is True
    assert catalog.forget_snapshot("s1") is False
    assert [s.id for s in catalog.snapshots()] == ["s0", "s2"]
    assert catalog.find("middle-only") == []
    assert [(h.snapshot_id, h.size) for h in catalog.find("changes")] == [("s2", 2), ("s0", 0)]
    assert [h.snapshot_id for h in catalog.find("keep")] == ["s2", "s0"]
    assert count(catalog, path_versions) == 3

    assert catalog.forget_snapshot("s2")
    catalog.record_snapshot(snap("s3", "web1", 3), [entries[0], file("/changes", 3)])
    assert [(h.snapshot_id, h.size) for h in catalog.find("changes")] == [("s3", 3), ("s0", 0)]
    assert [h.snapshot_id for h in catalog.find("keep")] == ["s3", "s0"]
    assert catalog.forget_snapshot("s0") and catalog.forget_snapshot("s3")
    assert count(catalog, path_versions) == 0


def _night(
    rng: random.Random, pool: list[str], last: dict[tuple[str, str], dict[str, int]]
) -> tuple[tuple[str, str], dict[str, int]]:
    """A random lineage's next night: its last entries (path -> size) with a few gone,
    resized (sizes repeat, so versions come back) or added; kept in ``last``."""
    lineage = (rng.choice(["web1", "web2"]), rng.choice(["default", "sql"]))
    current = dict(last.get(lineage, {p: 0 for p in rng.sample(pool, 8)}))
    for path in rng.sample(pool, 4):
        roll = rng.random()
        if roll < 0.3:
            current.pop(path, None)
        elif roll < 0.6:
            current[path] = rng.randint(0, 2)
        else:
            current.setdefault(path, 0)
    last[lineage] = current
    return lineage, current


@pytest.mark.parametrize("seed", range(3))
def test_the_index_agrees_with_a_plain_model_through_records_and_forgets(
    catalog: Catalog, seed: int
) -> None:
    """Random nights, re-recorded ids and forgets; after each step ``find`` gives exactly
    what a plain list of (snapshot, entry) pairs says."""
    rng = random.Random(seed)
    pool = [f"/d{i % 3}/f{i}" for i in range(16)]
    model: dict[str, set[tuple[str, str, int]]] = {}
    state: dict[tuple[str, str], dict[str, int]] = {}
    for step in range(36):
        lineage, current = _night(rng, pool, state)
        sid = f"s{step:02d}"
        entries = [file(p, size) for p, size in current.items()]
        assert catalog.record_snapshot(snap(sid, lineage[0], step, job=lineage[1]), entries)
        model[sid] = {(lineage[0], p, size) for p, size in current.items()}
        if model and rng.random() < 0.35:
            gone = rng.choice(sorted(model))
            assert catalog.forget_snapshot(gone)
            del model[gone]
        if rng.random() < 0.1:
            again = rng.choice(sorted(model))
            assert not catalog.record_snapshot(snap(again, "web1", 0), [file("/x")])
        found = catalog.find("*", limit=10**6)
        assert sorted((h.snapshot_id, h.client, h.path, h.size) for h in found) == sorted(
            (sid, client, path, size) for sid, rows in model.items() for client, path, size in rows
        )


@pytest.mark.parametrize("seed", range(3))
def test_snapshots_recorded_as_changes_agree_with_a_plain_model(
    catalog: Catalog, seed: int
) -> None:
    """The same random nights, each recorded as its changes against the lineage's last
    recorded snapshot (as a director does), or in full when that base is not the last
    any more (BaseNotLatest, nothing written); ``find`` always matches the model, and
    the rows are the ones full recording makes."""
    rng = random.Random(seed)
    pool = [f"/d{i % 3}/f{i}" for i in range(16)]
    model: dict[str, set[tuple[str, str, int]]] = {}
    states: dict[str, dict[str, int]] = {}  # snapshot -> its entries (path -> size)
    last: dict[tuple[str, str], dict[str, int]] = {}
    fallbacks = deltas = 0
    for step in range(40):
        lineage, current = _night(rng, pool, last)
        sid = f"s{step:02d}"
        record = snap(sid, lineage[0], step, job=lineage[1])
        head = catalog.lineage_head("main", *lineage)
        # Sometimes the director's idea of the base is stale (a snapshot it did not see).
        base = head.id if head is not None and rng.random() < 0.85 else rng.choice([*states, "x"])
        if head is not None and base in states:
            old = states[base]
            changed = [file(p, size) for p, size in current.items() if old.get(p) != size]
            removed = [p for p in old if p not in current]
            try:
                assert catalog.record_snapshot(record, changed, Changes(base, removed))
                deltas += 1
                assert base == head.id
            except BaseNotLatest:
                assert base != head.id
                assert catalog.get_snapshot(sid) is None  # nothing was written
                assert catalog.record_snapshot(record, [file(p, n) for p, n in current.items()])
                fallbacks += 1
        else:
            assert catalog.record_snapshot(record, [file(p, n) for p, n in current.items()])
        states[sid] = current
        model[sid] = {(lineage[0], p, size) for p, size in current.items()}
        if rng.random() < 0.3:
            gone = rng.choice(sorted(model))
            assert catalog.forget_snapshot(gone)
            del model[gone]
        found = catalog.find("*", limit=10**6)
        assert sorted((h.snapshot_id, h.client, h.path, h.size) for h in found) == sorted(
            (sid, client, path, size) for sid, rows in model.items() for client, path, size in rows
        )
    assert deltas >= 10 and fallbacks >= 1, (deltas, fallbacks)


def test_the_same_snapshot_recorded_at_once_is_recorded_once(catalog: Catalog) -> None:
    record = snap("race", "web1", 0)
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work() -> None:
        try:
            barrier.wait()
            results.append(catalog.record_snapshot(record, BASE))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False] * 5 + [True]
    assert count(catalog, path_versions) == len(BASE)


def test_clear_empties_the_index_but_keeps_history(catalog: Catalog) -> None:
    fleet(catalog)
    run_id = catalog.start_run("web1", "default", director="d", started_at=DAY0)
    catalog.clear()
    assert catalog.snapshots() == [] and catalog.find("*") == []
    assert count(catalog, paths) == 0
    assert catalog.get_run(run_id) is not None
    fleet(catalog)  # a rebuild records everything again
    assert len(catalog.find("hosts")) == 6
    catalog.clear(keep_history=False)
    assert catalog.get_run(run_id) is None
    assert catalog.clients() == [] and catalog.snapshots() == []
