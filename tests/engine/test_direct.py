"""Big files read around the page cache (engine/direct.py): the bytes are the file's,
whatever the reads do, and a file that cannot be read directly is read buffered."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strongroom.clock import SystemClock
from strongroom.engine.archiver import DIRECT_MIN, Archiver, BackupRequest, BackupResult
from strongroom.engine.direct import (
    AHEAD,
    BLOCK,
    DirectReader,
    RangeBuffers,
    ReadBuffers,
    cached,
    open_direct,
    read_ranges,
)
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.restorer import Restorer, RestoreRequest
from strongroom.repository import Repository, Snapshot
from tests.conftest import cli, init_repo, open_local_repo
from tests.reliability.helpers import evict


def _evicted(path: Path, data: bytes) -> Path:
    """``data`` written to ``path`` and dropped from the page cache (when this file
    system has one to drop it from)."""
    path.write_bytes(data)
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        if cached(fd):
            pytest.skip(f"{path.parent} keeps every page in memory (tmpfs?)")
    finally:
        os.close(fd)
    return path


@pytest.fixture
def opened() -> Iterator[Callable[[Path], int]]:
    fds: list[int] = []

    def open_(path: Path) -> int:
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1]

    yield open_
    for fd in fds:
        os.close(fd)


def _read_all(reader: DirectReader, rng: random.Random) -> bytes:
    """Everything ``reader`` gives, asked for in pieces of random sizes."""
    out = bytearray()
    while True:
        piece = memoryview(bytearray(rng.randrange(1, 3 * BLOCK)))
        n = reader.readinto(piece)
        if not n:
            return bytes(out)
        out += piece[:n]


def _direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize(
    "size", [1, 4096, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345, (AHEAD + 4) * BLOCK]
)
def test_a_direct_reader_gives_the_file_s_bytes(
    tmp_path: Path, opened: Callable[[Path], int], size: int
) -> None:
    data = random.Random(size).randbytes(size)
    fd = opened(_evicted(tmp_path / "f", data))
    reader = open_direct(fd, ReadBuffers())
    assert reader is not None and _direct(fd)
    with reader:
        assert _read_all(reader, random.Random(1)) == data
        assert reader.readinto(memoryview(bytearray(10))) == 0
    assert not _direct(fd)


def test_buffers_serve_one_file_after_another(
    tmp_path: Path, opened: Callable[[Path], int]
) -> None:
    buffers = ReadBuffers()
    rng = random.Random(2)
    for i in range(4):
        data = rng.randbytes(rng.randrange(1, 6 * BLOCK))
        fd = opened(_evicted(tmp_path / f"f{i}", data))
        reader = open_direct(fd, buffers)
        assert reader is not None
        with reader:
            assert _read_all(reader, rng) == data


def test_a_cached_file_is_read_buffered(tmp_path: Path, opened: Callable[[Path], int]) -> None:
    path = tmp_path / "dump.sql"
    path.write_bytes(b"just written, still in memory\n" * 100_000)
    fd = opened(path)
    assert cached(fd)
    assert open_direct(fd, ReadBuffers()) is None
    assert not _direct(fd)


def _preadv_failing(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[int, int], OSError | int | None]
) -> None:
    """os.preadv as direct.py sees it, with ``fail(fd, offset)`` deciding per read:
    an error to raise, a length to cut the read to, or None for the real read."""
    real = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        outcome = fail(fd, offset) if not flags else None
        if isinstance(outcome, OSError):
            raise outcome
        if isinstance(outcome, int):
            return real(fd, [memoryview(buffers[0])[:outcome]], offset)
        return real(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", preadv)


def test_einval_mid_file_reads_the_rest_buffered(
    tmp_path: Path, opened: Callable[[Path], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(3).randbytes(5 * BLOCK + 777)
    fd = opened(_evicted(tmp_path / "f", data))
    refused: list[int] = []

    def fail(fd: int, offset: int) -> OSError | None:
        if _direct(fd) and offset >= 2 * BLOCK:
            refused.append(offset)
            return OSError(errno.EINVAL, "alignment")
        return None

    _preadv_failing(monkeypatch, fail)
    reader = open_direct(fd, ReadBuffers())
    assert reader is not None
    with reader:
        assert _read_all(reader, random.Random(4)) == data
        assert not _direct(fd)
    assert refused


def test_a_short_read_is_the_end_even_if_later_blocks_have_data(
    tmp_path: Path, opened: Callable[[Path], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(5).randbytes(6 * BLOCK)
    fd = opened(_evicted(tmp_path / "f", data))
    _preadv_failing(monkeypatch, lambda fd, offset: 8192 if offset == BLOCK else None)
    reader = open_direct(fd, ReadBuffers())
    assert reader is not None
    with reader:
        assert _read_all(reader, random.Random(6)) == data[: BLOCK + 8192]


def test_a_read_error_is_raised_and_no_read_outlives_the_reader(
    tmp_path: Path, opened: Callable[[Path], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(7).randbytes(8 * BLOCK)
    fd = opened(_evicted(tmp_path / "f", data))
    _preadv_failing(
        monkeypatch,
        lambda fd, offset: OSError(errno.EIO, "I/O error") if offset == 2 * BLOCK else None,
    )
    reader = open_direct(fd, ReadBuffers())
    assert reader is not None
    with pytest.raises(OSError) as raised, reader:
        _read_all(reader, random.Random(8))
    assert raised.value.errno == errno.EIO
    assert not reader._pending and not _direct(fd)


def _backed_up(
    tmp_path: Path, files: dict[str, bytes], pack_size: int | None = None
) -> tuple[Repository, Path, BackupResult]:
    """A repository at tmp_path/repo holding one backup of ``files`` (in tmp_path/src,
    dropped from the page cache before they are read)."""
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        _evicted(src / name, data)
    repo = open_local_repo(tmp_path / "repo")
    if pack_size is not None:
        repo.pack_target_size = pack_size
    result = Archiver(repo, SystemClock(), FilesCache(tmp_path / "cache")).backup(
        BackupRequest(paths=[str(src)], client="c")
    )
    return repo, src, result


def _assert_restores(
    repo: Repository, snapshot: Snapshot, src: Path, files: dict[str, bytes], target: Path
) -> None:
    result = Restorer(repo).restore(snapshot, RestoreRequest(target=str(target)))
    assert not result.errors and not result.warnings
    for name, data in files.items():
        assert (target / str(src).lstrip("/") / name).read_bytes() == data


def test_a_backup_reads_big_files_directly_and_leaves_the_page_cache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(9)
    # Compressible and not, bigger than DIRECT_MIN, and one at the edge of it.
    files = {
        "text.log": b"".join(b"line %d of a log\n" % i for i in range(400_000)),
        "random.bin": rng.randbytes(5 * BLOCK + 3),
        "edge.bin": rng.randbytes(DIRECT_MIN + 1),
    }
    readers: list[DirectReader | None] = []
    real = open_direct

    def spy(fd: int, buffers: ReadBuffers) -> DirectReader | None:
        readers.append(real(fd, buffers))
        return readers[-1]

    monkeypatch.setattr("strongroom.engine.archiver.open_direct", spy)
    repo, src, result = _backed_up(tmp_path, files)
    assert not result.warnings
    assert len(readers) == 3 and all(r is not None for r in readers)
    for name in files:  # read, but not brought into memory for everyone else
        fd = os.open(src / name, os.O_RDONLY)
        try:
            assert not cached(fd), name
        finally:
            os.close(fd)
    _assert_restores(repo, result.snapshot, src, files, tmp_path / "restored")


# --- ranges of an object (a restore's pack reads) -------------------------------------


def _ranges(rng: random.Random, size: int, count: int) -> list[tuple[int, int]]:
    """``count`` increasing, unaligned ranges within ``size`` bytes."""
    cuts = sorted(rng.sample(range(size), 2 * count))
    return [(cuts[2 * i], cuts[2 * i + 1] - cuts[2 * i]) for i in range(count)]


def _direct_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECT)


def test_ranges_are_the_object_s_bytes(tmp_path: Path) -> None:
    rng = random.Random(10)
    data = rng.randbytes(9 * BLOCK + 5)
    path = _evicted(tmp_path / "pack", data)
    buffers = RangeBuffers()
    for count in (1, 2, 7):
        ranges = [*_ranges(rng, len(data), count), (len(data) - 3, 3)]
        fd = _direct_fd(path)
        try:
            got = [
                bytes(v) if isinstance(v, memoryview) else v
                for v in read_ranges(fd, ranges, buffers)
            ]
        finally:
            os.close(fd)
        assert got == [data[o : o + n] for o, n in ranges]
        assert not buffers.pending


def test_a_range_past_the_end_is_an_error_and_the_others_are_read(tmp_path: Path) -> None:
    data = random.Random(11).randbytes(3 * BLOCK)
    path = _evicted(tmp_path / "pack", data)
    ranges = [(100, 5000), (len(data) - 10, 20), (BLOCK + 1, 77)]
    fd = _direct_fd(path)
    try:
        got = [
            bytes(v) if isinstance(v, memoryview) else v
            for v in read_ranges(fd, ranges, RangeBuffers())
        ]
    finally:
        os.close(fd)
    assert got[0] == data[100:5100]
    assert isinstance(got[1], OSError) and got[1].errno == errno.ENODATA
    assert got[2] == data[BLOCK + 1 : BLOCK + 78]


def test_einval_reads_the_ranges_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    data = rng.randbytes(5 * BLOCK)
    path = _evicted(tmp_path / "pack", data)
    ranges = _ranges(rng, len(data), 5)
    _preadv_failing(
        monkeypatch,
        lambda fd, offset: OSError(errno.EINVAL, "alignment") if _direct(fd) and offset else None,
    )
    fd = _direct_fd(path)
    try:
        got = [
            bytes(v) if isinstance(v, memoryview) else v
            for v in read_ranges(fd, ranges, RangeBuffers())
        ]
        assert not _direct(fd)
    finally:
        os.close(fd)
    assert got == [data[o : o + n] for o, n in ranges]


def test_a_reader_dropped_mid_way_leaves_no_read_running(tmp_path: Path) -> None:
    rng = random.Random(13)
    data = rng.randbytes(6 * BLOCK)
    path = _evicted(tmp_path / "pack", data)
    buffers = RangeBuffers()
    fd = _direct_fd(path)
    try:
        reader = read_ranges(
            fd, [(0, 2 * BLOCK), (2 * BLOCK, 2 * BLOCK), (4 * BLOCK, BLOCK)], buffers
        )
        assert bytes(next(reader)) == data[: 2 * BLOCK]  # type: ignore[arg-type]
        # Not closed: the next reader on the same buffers waits for the read ahead.
        ranges = [(5, 100), (3 * BLOCK, 10)]
        got = [bytes(v) for v in read_ranges(fd, ranges, buffers)]  # type: ignore[arg-type]
        assert got == [data[5:105], data[3 * BLOCK : 3 * BLOCK + 10]]
        assert not buffers.pending
        reader.close()
    finally:
        os.close(fd)


def test_a_restore_reads_packs_around_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(14)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, 3 * BLOCK)) for i in range(12)}
    # Packs of 2 MiB: several packs, several reads each.
    repo, src, backup = _backed_up(tmp_path, files, pack_size=4 * BLOCK)
    for pack in (tmp_path / "repo").rglob("*"):
        if pack.is_file():
            _evicted(pack, pack.read_bytes())
    reads: list[int] = []
    real = read_ranges

    def spy(fd: int, ranges: list[tuple[int, int]], buffers: RangeBuffers) -> object:
        reads.append(len(ranges))
        return real(fd, ranges, buffers)

    monkeypatch.setattr("strongroom.engine.direct.read_ranges", spy)
    _assert_restores(repo, backup.snapshot, src, files, tmp_path / "restored")
    assert len(reads) >= 2 and sum(reads) >= 4, reads


def test_strongroom_direct_io_0_reads_through_the_page_cache(
    tmp_path: Path, opened: Callable[[Path], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = opened(_evicted(tmp_path / "f", random.Random(15).randbytes(3 * BLOCK)))
    monkeypatch.setenv("STRONGROOM_DIRECT_IO", "0")
    assert open_direct(fd, ReadBuffers()) is None
    monkeypatch.setenv("STRONGROOM_DIRECT_IO", "1")
    reader = open_direct(fd, ReadBuffers())
    assert reader is not None
    with reader:
        pass


def test_a_bad_strongroom_direct_io_stops_a_backup_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = init_repo(tmp_path / "repo")
    (tmp_path / "src").mkdir()
    monkeypatch.setenv("STRONGROOM_DIRECT_IO", "off")
    result = cli("--repo", str(repo), "backup", "--client", "c", str(tmp_path / "src"))
    assert result.code == 2, result.stderr
    assert "STRONGROOM_DIRECT_IO='off'" in result.stderr
    assert not list(repo.glob("snapshots/*"))


@pytest.mark.parametrize("direct_io", ["0", "1"])
def test_big_files_are_asked_ahead_only_when_read_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_io: str
) -> None:
    monkeypatch.setenv("STRONGROOM_DIRECT_IO", direct_io)
    files = {"small": b"s" * 1000, "big": random.Random(16).randbytes(3 * DIRECT_MIN)}
    asked: list[int] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            asked.append(length)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    repo, src, result = _backed_up(tmp_path, files)
    assert not result.warnings
    assert sorted(asked) == ([1000, 3 * DIRECT_MIN] if direct_io == "0" else [1000])
    _assert_restores(repo, result.snapshot, src, files, tmp_path / "restored")
