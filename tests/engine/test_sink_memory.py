"""A finished pack writer lets go of its buffers: a director serving many agent
sessions kept hundreds of finished writers' 1 MiB buffers alive (the sink of a session
can outlive it, and so can a thread's reference to its writer)."""

from __future__ import annotations

import os
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strongroom.clock import SystemClock
from strongroom.engine.sink import RepositorySink
from strongroom.repository.crypto import blob_id
from strongroom.repository.pack import DATA, WRITE_SIZE
from tests.conftest import open_local_repo


def _held_by_packs(snapshot: tracemalloc.Snapshot) -> int:
    pack = os.path.join("strongroom", "repository", "pack.py")
    return sum(
        s.size for s in snapshot.statistics("filename") if s.traceback[0].filename.endswith(pack)
    )


def test_finished_sinks_hold_no_pack_buffers(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    tracemalloc.start()
    try:
        sinks = []
        # Eight sessions, each storing from the same two long-lived threads (a
        # director's pool), all kept: each thread's writer for each sink stays
        # reachable from the thread.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for s in range(8):
                sink = RepositorySink(repo, SystemClock())

                def store(sink: RepositorySink = sink, s: int = s) -> None:
                    for i in range(3):
                        data = os.urandom(50_000) + bytes([s, i, threading.get_ident() % 251])
                        bid = blob_id(repo.master.id_key, data)
                        if sink.claim(bid):
                            sink.store(DATA, bid, data)

                barrier = threading.Barrier(2)  # both threads store for every session
                list(pool.map(lambda _, b=barrier: (b.wait(), store()), range(2)))
                sink.finish()
                sinks.append(sink)
            held = _held_by_packs(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    # Without the release: 16 writers x a 1 MiB staging buffer, and their sealed blobs.
    assert held < WRITE_SIZE // 4, f"{held} bytes still held by finished pack writers"
    assert len(sinks) == 8
