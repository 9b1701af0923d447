"""Reading big files around the page cache: O_DIRECT, a few blocks ahead.

A buffered read makes the kernel allocate page-cache pages, charge them, fill them,
copy them out and later reclaim them. On the VMs the benchmark runs on that costs
~1.2 s of CPU per GB read (cold, 8 MiB reads); a direct read costs ~0.2 s, and copying
each block into the chunker's buffer here ~0.1 s more (docs/performance.md, "A seventh
host"). The page cache also stays the server's: a nightly backup no longer evicts
its working set with data read once.

A direct read waits for the disk (the kernel reads nothing ahead for it), so a
thread of this process reads AHEAD blocks ahead of the consumer. Blocks are BLOCK
bytes at offsets that are multiples of BLOCK, into page-aligned buffers: the
alignment O_DIRECT asks for. A file is read buffered, as before, when
STRONGROOM_DIRECT_IO=0, or when:

- half or more of it is already in the page cache (cachestat(2)): a file just
  written, such as a database dump, is read from memory and not from the disk again;
- the file system refuses O_DIRECT (fcntl fails), or a direct read fails with EINVAL
  (an alignment it does not accept): the rest of the file is then read buffered from
  where the direct reads stopped.

A read that comes back short is the end of the file: blocks read after it are
dropped, even if the file grew in between (the archiver's fstat after the read flags
a file that changed).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from strongroom.backend import BackendError, ObjectNotFound
from strongroom.backend.local import translate_os_error
from strongroom.errors import UsageError

# With AHEAD, 2 MiB per reading thread; 1 MiB blocks read no faster and took 4 MiB
# more across a backup's processes.
BLOCK = 512 << 10
ALIGN = 4096  # O_DIRECT's alignment of offsets, lengths and buffers (a page)
AHEAD = 3  # blocks being read while one is consumed
# Threads that do the reads, per process (their reads wait for the disk, not for CPU).
READ_THREADS = 2

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0
_executor_lock = threading.Lock()


def _reads() -> ThreadPoolExecutor:
    """This process's read threads, started on first use (a forked child starts its
    own: the parent's threads are not copied)."""
    global _executor, _executor_pid
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            _executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="strongroom-read")
            _executor_pid = os.getpid()
        return _executor


class ReadBuffers:
    """The aligned block buffers of one reading thread, kept for its life (fresh
    buffers per file would be zeroed and faulted in each time)."""

    def __init__(self) -> None:
        self.blocks = [mmap.mmap(-1, BLOCK) for _ in range(AHEAD + 1)]


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


_O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # Linux's; elsewhere every read is buffered
_SYS_CACHESTAT = 451  # the same number on every architecture (Linux 6.5 and later)
_libc = ctypes.CDLL(None, use_errno=True)


def cached(fd: int) -> bool:
    """Whether half or more of the file's pages are in the page cache (cachestat(2),
    which reads nothing; a probing read would start the kernel's read-ahead). False
    where the kernel cannot tell (before Linux 6.5)."""
    stat = _Cachestat()
    if _libc.syscall(
        _SYS_CACHESTAT, fd, ctypes.byref(_CachestatRange(0, 0)), ctypes.byref(stat), 0
    ):
        return False
    return bool(stat.cache * mmap.PAGESIZE * 2 >= os.fstat(fd).st_size > 0)


def _set_direct(fd: int, on: bool) -> None:
    """Turn O_DIRECT on or off for the open file ``fd`` (OSError where refused)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)


def enabled() -> bool:
    """Whether big files and packs are read around the page cache (the default);
    STRONGROOM_DIRECT_IO=0 has every read go through it, as before."""
    given = os.environ.get("STRONGROOM_DIRECT_IO", "").strip()
    if given not in ("", "0", "1"):
        raise UsageError(
            f"STRONGROOM_DIRECT_IO={given!r}: give 1 (big files and packs read around the"
            " page cache, the default) or 0 (every read through it)"
        )
    return given != "0" and bool(_O_DIRECT)


def open_direct(fd: int, buffers: ReadBuffers) -> DirectReader | None:
    """A direct reader of ``fd`` from its start, or None when the file is cached, the
    file system refuses O_DIRECT or STRONGROOM_DIRECT_IO=0 (read it buffered)."""
    if not enabled() or cached(fd):
        return None
    try:
        _set_direct(fd, True)
    except OSError:
        return None
    return DirectReader(fd, buffers)


class DirectReader:
    """``readinto`` over a file opened for direct reads, AHEAD blocks read ahead.

    Use it as a context manager: leaving waits for the reads still running (their
    buffers are the next file's) and clears O_DIRECT.
    """

    def __init__(self, fd: int, buffers: ReadBuffers) -> None:
        self._fd = fd
        self._free = list(buffers.blocks)
        self._pending: deque[tuple[Future[int], mmap.mmap]] = deque()
        self._next = 0  # offset of the next block to ask for
        self._pos = 0  # offset of the next byte readinto returns
        self._block: memoryview | None = None  # the block being consumed, and its end
        self._block_at = self._block_end = 0
        self._block_buffer: mmap.mmap | None = None
        self._end = False  # a short read was seen: nothing after it is asked for
        self._buffered = False  # O_DIRECT was refused: read the rest with plain preadv
        for _ in range(AHEAD):
            self._ask()

    def _ask(self) -> None:
        if self._end or self._buffered or not self._free or len(self._pending) >= AHEAD:
            return
        buffer = self._free.pop()
        future = _reads().submit(os.preadv, self._fd, [buffer], self._next)
        self._pending.append((future, buffer))
        self._next += BLOCK

    def readinto(self, dest: memoryview) -> int:
        if (self._block is None or self._block_at >= self._block_end) and not self._take():
            return 0
        assert self._block is not None
        n = min(len(dest), self._block_end - self._block_at)
        dest[:n] = self._block[self._block_at : self._block_at + n]
        self._block_at += n
        self._pos += n
        return n

    def _take(self) -> bool:
        """Make the next block current; False at the end of the file."""
        if self._block_buffer is not None:
            self._free.append(self._block_buffer)
            self._block = self._block_buffer = None
        if self._buffered:
            return self._take_buffered()
        if self._end or not self._pending:
            self._drain()  # blocks after a short one are not the file's (it grew)
            return False
        future, buffer = self._pending.popleft()
        try:
            n = future.result()
        except OSError as e:
            self._free.append(buffer)
            if e.errno != errno.EINVAL:
                raise
            self._fall_back()
            return self._take_buffered()
        if n < BLOCK:
            self._end = True
        if not self._use(buffer, n):
            return False
        self._ask()
        return True

    def _fall_back(self) -> None:
        """O_DIRECT refused mid-way: drop the reads ahead, read on buffered."""
        self._drain()
        self._buffered = True
        _set_direct(self._fd, False)

    def _take_buffered(self) -> bool:
        buffer = self._free.pop()
        return self._use(buffer, os.preadv(self._fd, [buffer], self._pos))

    def _use(self, buffer: mmap.mmap, n: int) -> bool:
        """Make ``buffer``, ``n`` bytes read into it, the block being consumed; False
        (and the buffer free again) when nothing was read."""
        if n == 0:
            self._free.append(buffer)
            return False
        self._block_buffer, self._block = buffer, memoryview(buffer)
        self._block_at, self._block_end = 0, n
        return True

    def _drain(self) -> None:
        """Wait for the reads still running; their results are dropped."""
        while self._pending:
            future, buffer = self._pending.popleft()
            try:
                future.result()
            except OSError:
                pass
            self._free.append(buffer)

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drain()
        if self._block is not None:
            self._block.release()
            self._block = None
        if not self._buffered:
            try:
                _set_direct(self._fd, False)
            except OSError:
                pass


# --- ranges of an object (a restore's pack reads) ------------------------------------


class RangeBuffers:
    """Two page-aligned buffers of one reading thread: one range is used while the
    next is read into the other. Reads a reader left running (its generator was
    dropped mid-way) are waited for before the buffers serve again."""

    def __init__(self) -> None:
        self.blocks: list[mmap.mmap] = []
        self.pending: list[Future[int]] = []

    def sized(self, size: int) -> list[mmap.mmap]:
        size = -(-size // BLOCK) * BLOCK
        if not self.blocks or len(self.blocks[0]) < size:
            self.drain()
            self.blocks = [mmap.mmap(-1, size) for _ in range(2)]
        return self.blocks

    def drain(self) -> None:
        for future in self.pending:
            try:
                future.result()
            except OSError:
                pass
        self.pending.clear()


def _aligned(offset: int, length: int) -> tuple[int, int]:
    """The smallest range of whole ALIGN-sized blocks around ``[offset, offset+length)``."""
    start = offset - offset % ALIGN
    end = -(-(offset + length) // ALIGN) * ALIGN
    return start, end - start


def read_ranges(
    fd: int, ranges: list[tuple[int, int]], buffers: RangeBuffers
) -> Iterator[memoryview | OSError]:
    """Each ``(offset, length)`` range of ``fd`` (opened with O_DIRECT), in order, the
    next one read by a read thread while the caller uses this one. A view is valid until
    the next item is taken; an OSError stands for a range that could not be read (a
    short read is ENODATA). EINVAL (O_DIRECT refused) reads that range and the rest
    with plain reads of the same buffers."""
    buffers.drain()
    blocks = buffers.sized(max((_aligned(*r)[1] for r in ranges), default=0))
    plain = False

    def ask(i: int) -> Future[int]:
        start, length = _aligned(*ranges[i])
        future = _reads().submit(os.preadv, fd, [memoryview(blocks[i % 2])[:length]], start)
        buffers.pending.append(future)
        return future

    try:
        ahead = ask(0) if ranges else None
        for i, (offset, length) in enumerate(ranges):
            current = ahead
            ahead = ask(i + 1) if i + 1 < len(ranges) and not plain else None
            start = _aligned(offset, length)[0]
            piece = memoryview(blocks[i % 2])[offset - start : offset - start + length]
            try:
                if current is not None:
                    try:
                        got = current.result() - (offset - start)
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        plain = True  # the read ahead was refused too, or is dropped
                        current = ahead = None
                        buffers.drain()
                        _set_direct(fd, False)
                if current is None:
                    got = os.preadv(fd, [piece], offset)
            except OSError as e:
                yield e
                continue
            if got < length:
                yield OSError(errno.ENODATA, f"short read ({got} of {length} bytes)")
                continue
            yield piece
    finally:
        buffers.drain()


_range_buffers = threading.local()


def object_ranges(
    backend: object, name: str, ranges: list[tuple[int, int]]
) -> Iterator[memoryview | BackendError] | None:
    """``read_ranges`` over object ``name`` of ``backend`` when it is a local file that is
    not in the page cache (its descriptor is closed when the iterator ends), else None:
    read it as before. A range that cannot be read is the error a load of it would have
    raised (ObjectNotFound when short); the backend's errors in opening it (not found)
    are raised."""
    opener = getattr(backend, "open_direct", None)
    if opener is None or not enabled():
        return None
    fd: int | None = opener(name)
    if fd is None:
        return None
    if cached(fd):
        os.close(fd)
        return None
    buffers: RangeBuffers | None = getattr(_range_buffers, "buffers", None)
    if buffers is None:
        buffers = _range_buffers.buffers = RangeBuffers()
    return _as_loads(fd, name, read_ranges(fd, ranges, buffers))


def _as_loads(
    fd: int, name: str, items: Iterator[memoryview | OSError]
) -> Iterator[memoryview | BackendError]:
    """``items`` with their OSErrors as the backend's errors; ``fd`` closed at the end."""
    try:
        for item in items:
            if not isinstance(item, OSError):
                yield item
            elif item.errno == errno.ENODATA:
                yield ObjectNotFound(f"loading {name}: {item.strerror}")
            else:
                yield translate_os_error(item, f"loading {name}")
    finally:
        os.close(fd)
