"""R13: files that change or vanish during a backup are reported, and read again later."""

from __future__ import annotations

import os
from pathlib import Path

from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.walk import find_node
from tests.conftest import open_local_repo


class _AppendWhileReading(Archiver):
    """An archiver during whose read of ``victim`` another writer appends to it."""

    victim: bytes = b""

    def _read_content(
        self, fd: int, st: os.stat_result, new_file: bool
    ) -> tuple[list[bytes | int], int]:
        result = super()._read_content(fd, st, new_file)
        if os.readlink(f"/proc/self/fd/{fd}").encode() == self.victim:
            with open(self.victim, "ab") as f:
                f.write(b"appended during the backup\n")
        return result


def test_a_file_changed_while_read_is_flagged_and_read_again(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(b"line\n" * 100_000)
    (src / "stable").write_bytes(b"x" * 1000)
    os.utime(src / "stable", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    cache = tmp_path / "files-cache"
    repo = open_local_repo(tmp_path / "repo")

    archiver = _AppendWhileReading(repo, SystemClock(), FilesCache(cache))
    archiver.victim = os.fsencode(src / "log")
    first = archiver.backup(BackupRequest(paths=[str(src)], client="c"))
    assert [w.path for w in first.warnings] == [str(src / "log")]
    assert "changed while being read" in first.warnings[0].message
    node = find_node(repo, first.snapshot.tree, os.fsencode(src / "log"))
    assert node is not None and node.changed

    second = Archiver(repo, SystemClock(), FilesCache(cache)).backup(
        BackupRequest(paths=[str(src)], client="c")
    )
    assert not second.warnings
    assert second.snapshot.summary.files_read == 1  # only the changed file
    assert second.snapshot.summary.files_unmodified == 1
    node = find_node(repo, second.snapshot.tree, os.fsencode(src / "log"))
    assert node is not None and not node.changed
    assert node.size == (src / "log").stat().st_size


def test_a_file_modified_just_before_it_is_read_is_read_again(tmp_path: Path) -> None:
    """Timestamps move in ticks: a same-size rewrite in the tick after the read would
    leave size, mtime and ctime unchanged, so a fresh mtime is never trusted to the
    files cache: the next backup reads the file again even though nothing changed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "fresh").write_bytes(b"version 1")
    (src / "old").write_bytes(b"old")
    os.utime(src / "old", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    cache = tmp_path / "files-cache"
    repo = open_local_repo(tmp_path / "repo")
    for _ in range(2):
        result = Archiver(repo, SystemClock(), FilesCache(cache)).backup(
            BackupRequest(paths=[str(src)], client="c")
        )
    assert result.snapshot.summary.files_read == 1  # "fresh", again
    assert result.snapshot.summary.files_unmodified == 1  # "old", from the cache
    # read again because it was seen before: a changed file, not a new one
    assert (result.snapshot.summary.files_changed, result.snapshot.summary.files_new) == (1, 0)


def test_a_file_that_vanishes_before_it_is_read_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i:02}").write_bytes(b"data %d" % i)
    repo = open_local_repo(tmp_path / "repo")

    class _Vanish(Archiver):
        def _open_file(self, path: bytes) -> int:
            if path.endswith(b"f07"):
                os.unlink(path)
            return super()._open_file(path)

    result = _Vanish(repo, SystemClock()).backup(BackupRequest(paths=[str(src)], client="c"))
    assert [w.path for w in result.warnings] == [str(src / "f07")]
    assert find_node(repo, result.snapshot.tree, os.fsencode(src / "f07")) is None
    assert find_node(repo, result.snapshot.tree, os.fsencode(src / "f08")) is not None
