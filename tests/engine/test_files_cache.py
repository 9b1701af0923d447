"""The files cache: this run's entries are spooled to a temporary file, not kept in
memory; ``save`` makes it the cache, a failed backup leaves the old one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from strongroom.backend import MemoryBackend
from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.files_cache import FilesCache
from strongroom.repository import TEST_KDF, Repository
from strongroom.repository.tree import FILE, Node


def _node(st: os.stat_result) -> Node:
    return Node(
        name=b"f",
        type=FILE,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
    )


def _spools(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path.parent) if n.startswith(path.name + ".tmp"))


def test_entries_are_spooled_to_disk_and_saved(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for i in range(300):
        f = data / f"f{i}"
        f.write_bytes(b"x" * i)
        files.append(f)
    path = tmp_path / "cache" / "files-c"
    cache = FilesCache(path)
    for i, f in enumerate(files):
        st = os.lstat(f)
        cache.remember(os.fsencode(f), st, [bytes([i % 256]) * 32, i], [(b"user.k", b"v")])
    assert not cache._new  # nothing held in memory
    assert _spools(path) == [f"files-c.tmp{os.getpid()}"]
    assert cache.save() is None
    assert _spools(path) == []
    again = FilesCache(path)
    for i, f in enumerate(files):
        entry = again.lookup(os.fsencode(f), _node(os.lstat(f)))
        assert entry is not None
        assert entry.content == [bytes([i % 256]) * 32, i]
        assert entry.xattrs == [(b"user.k", b"v")]
    # Carried over by keep, as an unchanged file is: the next cache has it again.
    kept = FilesCache(path)
    kept.keep(os.fsencode(files[7]))
    assert kept.save() is None
    last = FilesCache(path)
    assert last.known(os.fsencode(files[7]))
    assert not last.known(os.fsencode(files[8]))


def test_a_run_that_saw_nothing_saves_an_empty_cache(tmp_path: Path) -> None:
    path = tmp_path / "files-c"
    path.write_bytes(b"\x81\xc4\x01a\xc4\x01b")  # an old cache: {b"a": b"b"}
    assert FilesCache(path).known(b"a")
    assert FilesCache(path).save() is None
    assert not FilesCache(path).known(b"a")


def test_discard_keeps_the_old_cache(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    path = tmp_path / "files-c"
    first = FilesCache(path)
    first.remember(os.fsencode(f), os.lstat(f), [b"i" * 32], [])
    assert first.save() is None
    second = FilesCache(path)
    second.remember(b"/other", os.lstat(f), [b"j" * 32], [])
    second.discard()
    assert _spools(path) == []
    third = FilesCache(path)
    assert third.known(os.fsencode(f))
    assert not third.known(b"/other")


def test_a_failed_backup_discards_its_spool(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 1000)
    path = tmp_path / "files-c"
    cache = FilesCache(path)

    class Broken(Archiver):
        def _end_lanes(self, how: str) -> None:  # after the walk: the files are seen
            if how == "finish":
                assert _spools(path), "the entries should be spooled by now"
                raise RuntimeError("the repository went away")

    repo = Repository.init(
        MemoryBackend(), b"pw", kdf=TEST_KDF, created="", hostname="", username=""
    )
    repo.load_index()
    archiver = Broken(repo, SystemClock(), cache, workers=1)
    request = BackupRequest(paths=(str(data),), client="c", job="j", hostname="h", username="u")
    with pytest.raises(RuntimeError):
        archiver.backup(request)
    assert _spools(path) == []
    assert not path.exists()


def test_the_spools_of_killed_runs_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "files-c"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"files-c.tmp{int(dead.stdout)}"
    stale.write_bytes(b"partial")
    live = tmp_path / f"files-c.tmp{os.getppid()}"  # a running process's: left alone
    live.write_bytes(b"in use")
    f = tmp_path / "f"
    f.write_bytes(b"data")
    cache = FilesCache(path)
    cache.remember(os.fsencode(f), os.lstat(f), [b"i" * 32], [])
    assert not stale.exists()
    assert live.exists()
    assert cache.save() is None


def test_a_cache_that_cannot_be_written_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    path = blocker / "files-c"  # its parent is a file: nothing can be written there
    f = tmp_path / "f"
    f.write_bytes(b"data")
    cache = FilesCache(path)
    cache.remember(os.fsencode(f), os.lstat(f), [b"i" * 32], [])
    problem = cache.save()
    assert problem is not None and "not saved" in problem
    assert sorted(os.listdir(tmp_path)) == ["f", "not-a-dir"]


def test_a_worker_keeps_its_entries_in_memory_for_its_parent(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    cache = FilesCache(None)
    cache.remember(os.fsencode(f), os.lstat(f), [b"i" * 32], [])
    handed = cache.take_new()
    assert [p for p, _ in handed] == [os.fsencode(f)]
    parent = FilesCache(tmp_path / "files-c")
    for p, encoded in handed:
        parent.keep_encoded(p, encoded)
    assert parent.save() is None
    assert FilesCache(tmp_path / "files-c").known(os.fsencode(f))
