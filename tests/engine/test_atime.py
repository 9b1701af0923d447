"""A backup reads files and lists directories without touching their access times
(O_NOATIME), and still reads them where the kernel refuses that flag."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from strongroom.clock import SystemClock
from strongroom.engine import fsmeta
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.scan import scan_directory
from strongroom.engine.walk import find_node
from strongroom.repository import DATA
from tests.conftest import open_local_repo

OLD_ATIME_NS = 1_000_000_000 * 10**9  # 2001: older than the mtime, so relatime updates it
MTIME_NS = 1_600_000_000 * 10**9


def _age(path: Path) -> None:
    os.utime(path, ns=(OLD_ATIME_NS, MTIME_NS), follow_symlinks=False)


def _reading_updates_atime(tmp_path: Path) -> bool:
    """Whether this file system sets atime when a file with an old one is read (not
    on a noatime mount): without that, the tests below could not fail."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"probe")
    _age(probe)
    with open(probe, "rb") as f:
        f.read()
    return probe.stat().st_atime_ns != OLD_ATIME_NS


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "small").write_bytes(b"small file\n")
    (src / "sub" / "big").write_bytes(os.urandom(3 << 20))  # over DIRECT_MIN: the big-file path
    for path in (src / "small", src / "sub" / "big", src / "sub", src):
        _age(path)
    return src


def test_a_backup_leaves_access_times_as_they_were(tmp_path: Path) -> None:
    if not _reading_updates_atime(tmp_path):
        pytest.skip("this file system does not update atime on reads")
    src = _tree(tmp_path)
    repo = open_local_repo(tmp_path / "repo")
    result = Archiver(repo, SystemClock()).backup(BackupRequest(paths=[str(src)], client="c"))
    assert result.snapshot.summary.files_read == 2
    for path in (src / "small", src / "sub" / "big", src / "sub", src):
        assert path.stat().st_atime_ns == OLD_ATIME_NS, path
    node = find_node(repo, result.snapshot.tree, os.fsencode(src / "sub" / "big"))
    assert node is not None
    data = b"".join(repo.load_blob(bid, DATA) for bid in node.content if isinstance(bid, bytes))
    assert data == (src / "sub" / "big").read_bytes()


def test_files_are_read_where_the_kernel_refuses_o_noatime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the file's owner and no CAP_FOWNER: open(O_NOATIME) fails with EPERM, and
    the file is opened again without it (atime then moves, as with any reader)."""
    src = _tree(tmp_path)
    plain_open = fsmeta.open_path
    refused: list[bytes] = []

    def refuse_noatime(path: bytes, flags: int) -> int:
        if flags & fsmeta.O_NOATIME:
            refused.append(path)
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return plain_open(path, flags)

    monkeypatch.setattr(fsmeta, "open_path", refuse_noatime)
    repo = open_local_repo(tmp_path / "repo")
    result = Archiver(repo, SystemClock()).backup(BackupRequest(paths=[str(src)], client="c"))
    assert not result.warnings
    assert result.snapshot.summary.files_read == 2
    # Both files were opened here. Directories are listed by a scanner process where
    # this process has one thread (not under pytest-xdist), so list one here too.
    assert {os.fsencode(src / "small"), os.fsencode(src / "sub" / "big")} <= set(refused)
    refused.clear()
    listing = scan_directory(os.fsencode(src / "sub"), [])
    assert [n.name for n in listing.entries] == [b"big"] and not listing.problems
    assert refused == [os.fsencode(src / "sub")]
    node = find_node(repo, result.snapshot.tree, os.fsencode(src / "small"))
    assert node is not None and node.size == len(b"small file\n")


def test_other_open_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES is the file's own answer: the file is named as unreadable, once."""
    src = _tree(tmp_path)
    plain_open = fsmeta.open_path
    calls: list[int] = []

    def deny(path: bytes, flags: int) -> int:
        if path == os.fsencode(src / "small"):
            calls.append(flags)
            raise PermissionError(errno.EACCES, "Permission denied")
        return plain_open(path, flags)

    monkeypatch.setattr(fsmeta, "open_path", deny)
    result = Archiver(open_local_repo(tmp_path / "repo"), SystemClock()).backup(
        BackupRequest(paths=[str(src)], client="c")
    )
    assert [w.path for w in result.warnings] == [str(src / "small")]
    assert "Permission denied" in result.warnings[0].message
    assert len(calls) == 1
