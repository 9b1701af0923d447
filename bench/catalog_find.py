#!/usr/bin/env python3
"""Time ``find`` of one file name across a fleet's catalog, on SQLite and PostgreSQL.

Fills a catalog through ``Catalog.record_snapshot`` with a simulated fleet (default 500
clients x 30 nightly snapshots x 2,000 entries) and times ``Catalog.find`` queries.
The target is issue 3's: one name across 500 clients x 30 snapshots in under 1 s.
Then it adds run history for the status queries (default 5,000 clients x 60 runs,
inserted directly, not through the API) and times ``last_runs`` and ``stale_clients``.

The data, seeded so every run is the same:

- 60% of each client's entries are shared by every client and never change (OS files);
  among them ``/etc/ssh/sshd_config``, present in all 15,000 snapshots;
- 40% are the client's own (``/home/CLIENT/...``); each night 10% of all entries
  change: 3/4 of the changes are modified files (new size and mtime), 1/4 are files
  removed and replaced by new names;
- ``/var/log/app.log`` changes every night on every client (the worst case for the
  index: a new row per snapshot), and one report file appears per client halfway.

Usage::

    .venv/bin/python bench/catalog_find.py                   # full size, both databases
    .venv/bin/python bench/catalog_find.py --clients 50      # quicker
    .venv/bin/python bench/catalog_find.py --backends sqlite --keep

PostgreSQL: ``--pg-admin-url`` (default postgresql://postgres@127.0.0.1:5432/postgres)
must be allowed to create the database ``sr_bench_find``, which is dropped at the end
unless ``--keep``. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from strongroom.catalog import Catalog, FindHit, PathEntry, SnapshotRecord

START = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
SHARED_FRACTION = 0.6
CHANGE_FRACTION = 0.1
PG_DATABASE = "sr_bench_find"


@dataclass
class Client:
    name: str
    entries: dict[str, PathEntry]
    rng: random.Random
    next_file: int = 0


def shared_entries(count: int) -> list[PathEntry]:
    rng = random.Random(1)
    out = [PathEntry("/etc/ssh/sshd_config", "file", 3_300, START - timedelta(days=400))]
    for i in range(count - 1):
        package = f"/usr/share/pkg{i // 40:03d}"
        mtime = START - timedelta(days=rng.randint(30, 900))
        out.append(PathEntry(f"{package}/file-{i:05d}.dat", "file", rng.randint(0, 1 << 20), mtime))
    return out


def new_client(index: int, shared: list[PathEntry], own: int) -> Client:
    name = f"c{index:04d}"
    rng = random.Random(1000 + index)
    entries = {e.path: e for e in shared}
    client = Client(name, entries, rng)
    log = PathEntry("/var/log/app.log", "file", 0, START)
    entries[log.path] = log
    for _ in range(own - 1):
        add_own_file(client, START - timedelta(days=rng.randint(1, 300)))
    return client


def add_own_file(client: Client, mtime: datetime) -> None:
    n = client.next_file
    client.next_file += 1
    path = f"/home/{client.name}/d{n % 37:02d}/doc-{n:06d}.txt"
    client.entries[path] = PathEntry(path, "file", client.rng.randint(0, 1 << 16), mtime)


def night(client: Client, number: int, when: datetime, total: int) -> None:
    """Change the client's files as one day does before snapshot ``number``."""
    rng = client.rng
    own = [p for p in client.entries if p.startswith("/home/")]
    changes = int(total * CHANGE_FRACTION)
    log = client.entries["/var/log/app.log"]
    client.entries[log.path] = PathEntry(log.path, "file", log.size + 4096, when)
    replaced = changes // 4
    for path in rng.sample(own, changes - 1):
        if replaced > 0:
            del client.entries[path]
            add_own_file(client, when)
            replaced -= 1
        else:
            old = client.entries[path]
            client.entries[path] = PathEntry(path, "file", old.size + rng.randint(1, 999), when)
    if number == 15:
        path = f"/home/{client.name}/report-{client.name}-q1.pdf"
        client.entries[path] = PathEntry(path, "file", 123_456, when)


def fill(catalog: Catalog, clients: int, snapshots: int, paths: int, workers: int) -> float:
    shared = shared_entries(int(paths * SHARED_FRACTION))
    own = paths - len(shared) - 1
    done = [0]
    lock = threading.Lock()
    started = time.monotonic()

    def work(indexes: list[int]) -> None:
        for i in indexes:
            client = new_client(i, shared, own)
            for n in range(snapshots):
                when = START + timedelta(days=n, minutes=i % 240)
                if n:
                    night(client, n, when, paths)
                record = SnapshotRecord(
                    id=f"{i:08x}{n:08x}".ljust(64, "0"),
                    repository="main",
                    client=client.name,
                    job="default",
                    time=when,
                    tree="0" * 64,
                    paths=["/"],
                )
                catalog.record_snapshot(record, client.entries.values())
            with lock:
                done[0] += 1
                if done[0] % max(1, clients // 10) == 0:
                    rate = done[0] * snapshots / (time.monotonic() - started)
                    print(f"  {done[0]}/{clients} clients, {rate:.0f} snapshots/s", flush=True)

    threads = [
        threading.Thread(target=work, args=(list(range(w, clients, workers)),))
        for w in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def timed(fn: Callable[[], list[FindHit]], repeat: int) -> tuple[float, float, int]:
    times = []
    hits = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        hits = len(fn())
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), hits


def queries(
    catalog: Catalog, clients: int, snapshots: int
) -> Iterator[tuple[str, Callable[[], list[FindHit]]]]:
    some = f"c{clients // 2:04d}"
    last_week = START + timedelta(days=snapshots - 7)
    yield "sshd_config (limit 1000)", lambda: catalog.find("sshd_config")
    yield "sshd_config (all hits)", lambda: catalog.find("sshd_config", limit=10**7)
    yield "app.log (all hits, new row nightly)", lambda: catalog.find("app.log", limit=10**7)
    yield (
        "SSHD_CONFIG ignore_case (all)",
        lambda: catalog.find("SSHD_CONFIG", ignore_case=True, limit=10**7),
    )
    yield (
        "/etc/ssh/sshd_config path (all)",
        lambda: catalog.find("/etc/ssh/sshd_config", limit=10**7),
    )
    yield f"sshd_config --client {some}", lambda: catalog.find("sshd_config", client=some)
    yield (
        "sshd_config --since last week (all)",
        lambda: catalog.find("sshd_config", since=last_week, limit=10**7),
    )
    yield f"report-{some}* glob", lambda: catalog.find(f"report-{some}*")
    yield "report-*.pdf glob (all)", lambda: catalog.find("report-*.pdf", limit=10**7)
    yield "*.pdf leading wildcard (all)", lambda: catalog.find("*.pdf", limit=10**7)


def sizes(catalog_url: str) -> str:
    engine = sa.create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            counts = {
                table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("snapshots", "paths", "path_versions")
            }
            if engine.dialect.name == "postgresql":
                size = conn.execute(sa.text("SELECT pg_database_size(current_database())"))
                total = int(size.scalar_one())
            else:
                assert engine.url.database is not None
                base = Path(engine.url.database)
                total = sum(
                    p.stat().st_size for p in base.parent.iterdir() if p.name.startswith(base.name)
                )
    finally:
        engine.dispose()
    rows = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    return f"{rows}; database {total / 2**20:,.0f} MiB"


def analyze(catalog_url: str) -> None:
    engine = sa.create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
    finally:
        engine.dispose()


def status_queries(catalog: Catalog, url: str, clients: int, runs: int, repeat: int) -> None:
    """Fill run history directly (the API would take a transaction per run) and time
    the status queries over it."""
    from strongroom.catalog import schema

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    names = [f"fleet{i:05d}" for i in range(clients)]
    rng = random.Random(5)
    started = time.monotonic()
    try:
        with engine.begin() as conn:
            conn.execute(
                schema.clients.insert(),
                [{"name": n, "first_seen": START, "last_seen": START} for n in names],
            )
            for night in range(runs):
                begin = START + timedelta(days=night)
                conn.execute(
                    schema.runs.insert(),
                    [
                        {
                            "id": f"{night:04d}-{i:05d}",
                            "client": n,
                            "job": "default",
                            "director": "d1",
                            "started_at": begin + timedelta(seconds=i),
                            "finished_at": begin + timedelta(seconds=i + 600),
                            "status": "failed" if rng.random() < 0.02 else "succeeded",
                            "exit_code": 0,
                        }
                        for i, n in enumerate(names)
                    ],
                )
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(sa.text("ANALYZE"))
                conn.commit()
    finally:
        engine.dispose()
    print(f"status: {clients} clients x {runs} runs inserted in {time.monotonic() - started:.1f} s")
    now = START + timedelta(days=runs)
    status: list[tuple[str, Callable[[], Sized]]] = [
        ("last_runs() of every client", lambda: catalog.last_runs()),
        ("last_runs(one client)", lambda: catalog.last_runs(names[clients // 2])),
        (
            "stale_clients(1 day) over the fleet",
            lambda: catalog.stale_clients(now, timedelta(days=1), names),
        ),
    ]
    for title, query in status:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = len(query())
            times.append(time.perf_counter() - t0)
        flag = "" if min(times) < 1.0 else "  <-- over 1 s"
        print(
            f"  {title:42s} {min(times):7.3f} {statistics.median(times):7.3f}"
            f"  {found:6d} rows{flag}"
        )


def run_backend(name: str, url: str, args: argparse.Namespace) -> None:
    print(f"\n== {name}")
    with Catalog.open(url, auto_migrate=True) as catalog:
        if args.clients:
            find_queries(catalog, name, url, args)
        if args.status_clients:
            status_queries(catalog, url, args.status_clients, args.status_runs, args.repeat)


def find_queries(catalog: Catalog, name: str, url: str, args: argparse.Namespace) -> None:
    print(f"{args.clients} clients x {args.snapshots} snapshots x {args.paths} paths")
    workers = 1 if name == "sqlite" else args.workers
    seconds = fill(catalog, args.clients, args.snapshots, args.paths, workers)
    total = args.clients * args.snapshots
    print(
        f"fill: {seconds:,.1f} s, {total / seconds:,.0f} snapshots/s, "
        f"{total * args.paths / seconds:,.0f} entries/s ({workers} writer threads)"
    )
    print(f"size: {sizes(url)}")
    for label in ("before ANALYZE", "after ANALYZE"):
        if label == "after ANALYZE":
            analyze(url)
        print(f"find, {label} (best / median of {args.repeat}, seconds):")
        for title, query in queries(catalog, args.clients, args.snapshots):
            best, median, hits = timed(query, args.repeat)
            flag = "" if best < 1.0 else "  <-- over 1 s"
            print(f"  {title:42s} {best:7.3f} {median:7.3f}  {hits:6d} hits{flag}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="0: skip find")
    parser.add_argument("--snapshots", type=int, default=30)
    parser.add_argument("--paths", type=int, default=2000, help="entries per snapshot")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workdir", default="/tmp/strongroom-catalog-bench")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--workers", type=int, default=4, help="PostgreSQL writer threads")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--status-clients", type=int, default=5000, help="0: skip")
    parser.add_argument("--status-runs", type=int, default=60, help="runs per client")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()

    for backend in args.backends.split(","):
        if backend == "sqlite":
            workdir = Path(args.workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            try:
                run_backend("sqlite", f"sqlite:///{workdir / 'catalog.db'}", args)
            finally:
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
        elif backend == "postgresql":
            admin = sa.create_engine(
                args.pg_admin_url.replace("postgresql://", "postgresql+psycopg://"),
                isolation_level="AUTOCOMMIT",
            )
            drop = sa.text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            try:
                with admin.connect() as conn:
                    conn.execute(drop)
                    conn.execute(sa.text(f"CREATE DATABASE {PG_DATABASE}"))
                url = admin.url.set(database=PG_DATABASE, drivername="postgresql")
                run_backend("postgresql", url.render_as_string(hide_password=False), args)
            finally:
                if not args.keep:
                    with admin.connect() as conn:
                        conn.execute(drop)
                admin.dispose()
        else:
            parser.error(f"unknown backend {backend!r}")
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
