"""The walk never waits for one backed-up path's files before starting on the next."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from strongroom.clock import SystemClock
from strongroom.engine.archiver import (
    BATCH_BYTES,
    Archiver,
    BackupRequest,
    _Held,
    _PendingFile,
)
from strongroom.engine.walk import walk
from tests.conftest import open_local_repo


class _HeldUntilNextPath(Archiver):
    """Reading the first path's file blocks until a file of the second path is being
    read: a walk that finished the first path (waiting for its files) before listing
    the second would never let it go."""

    first: bytes = b""
    second: bytes = b""
    second_started = threading.Event()

    def _read_file(self, pending: _PendingFile, fd: int, counts: object) -> _Held | None:
        if pending.path.startswith(self.second):
            self.second_started.set()
        elif pending.path.startswith(self.first):
            self.second_started.wait(timeout=30)
        return super()._read_file(pending, fd, counts)  # type: ignore[arg-type]


def test_the_next_path_is_read_while_the_last_files_of_one_are(tmp_path: Path) -> None:
    (tmp_path / "x" / "a" / "deep").mkdir(parents=True)
    (tmp_path / "x" / "b").mkdir(parents=True)
    # each a batch of its own, handed to a file thread as soon as the walk meets it
    (tmp_path / "x" / "a" / "deep" / "f").write_bytes(b"1" * BATCH_BYTES)
    (tmp_path / "x" / "b" / "g").write_bytes(b"2" * BATCH_BYTES)
    repo = open_local_repo(tmp_path / "repo")
    archiver = _HeldUntilNextPath(repo, SystemClock(), workers=2)
    archiver.first = os.fsencode(tmp_path / "x" / "a")
    archiver.second = os.fsencode(tmp_path / "x" / "b")
    paths = [str(tmp_path / "x" / "a" / "deep"), str(tmp_path / "x" / "b")]
    started = time.monotonic()
    result = archiver.backup(BackupRequest(paths=paths, client="c"))
    assert time.monotonic() - started < 20, "the walk waited for the first path's files"
    found = {p: node for p, node in walk(repo, result.snapshot.tree)}
    base = os.fsencode(tmp_path)
    assert {base + b"/x/a/deep/f", base + b"/x/b/g"} <= found.keys()
    # the directories above the paths keep their own metadata
    x = found[base + b"/x"]
    assert x.type == "dir" and x.mtime_ns == os.lstat(tmp_path / "x").st_mtime_ns
