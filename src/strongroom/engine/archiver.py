"""The archiver: local paths in, a snapshot out.

The walk runs on the calling thread, fed by scanner threads that list and stat the
directories just ahead of it, so cold metadata reads overlap. Files that must be read
go to worker threads in batches: a worker opens a batch's files and asks the kernel to
read the small ones ahead (posix_fadvise; big ones are read around the page cache, a
few blocks ahead: engine/direct.py), then reads, chunks, hashes, compresses and
encrypts each (the libraries release the GIL), filling its own pack. Trees are finished in
post-order once their files are done, so only a bounded amount of work is in flight.
Streams (a command's output, see engine/streams.py) are read by workers too, alongside
the walk, and stored as files below /stdin.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

from strongroom.clock import Clock
from strongroom.engine import scanproc
from strongroom.engine.direct import ReadBuffers, open_direct
from strongroom.engine.direct import enabled as direct_enabled
from strongroom.engine.files_cache import CachedFile, FilesCache
from strongroom.engine.fsmeta import display_path, node_from_stat, open_noatime, read_xattrs
from strongroom.engine.scan import Scanner
from strongroom.engine.scanproc import directory_roots, normalize_paths
from strongroom.engine.sink import BlobSink, RepositorySink
from strongroom.engine.streams import (
    STREAM_ROOT,
    StreamSource,
    check_stream_names,
    stream_dir_node,
    stream_file_node,
    stream_parts,
    stream_path,
)
from strongroom.engine.workers import Worker, WorkerFailed, lane_slots, pack_entries
from strongroom.errors import UsageError
from strongroom.repository import DATA, TREE, Chunker, Node, Repository, Snapshot, Summary
from strongroom.repository.crypto import blob_id
from strongroom.repository.tree import DIR, FILE, encode_tree

# Directories walked, waiting for their files to be read to be written as trees.
MAX_DIRS_WAITING = 1024
# A directory's files are looked up in the files cache, and their chunks asked about,
# this many at a time (one round trip each, where the sink is a director).
LOOKUP_BATCH = 256
# New trees are claimed together (one question to the sink: one round trip, where it
# is a director) once this many, or this much of them, wait.
TREE_BATCH = 256
TREE_BATCH_BYTES = 1 << 20
# One worker task: enough files to keep the disk busy, few enough to spread the work.
BATCH_FILES = 128
BATCH_BYTES = 8 << 20
# Files up to this size are asked to be read ahead, whole, when their batch opens
# them; bigger ones are read around the page cache, a few blocks ahead of the
# chunker (engine/direct.py): a direct read of a small file would wait for the disk.
DIRECT_MIN = 1 << 20
# With direct reads off (STRONGROOM_DIRECT_IO=0), every file is asked to be read ahead
# when its batch opens it: the whole of a small one, this much of a big one.
READAHEAD_BYTES = 16 << 20
# Files modified this close to being read are not trusted to the files cache: file
# timestamps move in ticks (a few ms on Linux, 2 s on FAT), as in git's "racy clean".
RACY_WINDOW_NS = 2_000_000_000

# O_NONBLOCK: a FIFO swapped in for a file must not block the open.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ArchiveProgress(Protocol):
    def file_done(self, path: bytes, size: int, read: bool) -> None: ...
    def warning(self, path: bytes, message: str) -> None: ...


class _NoProgress:
    def file_done(self, path: bytes, size: int, read: bool) -> None:
        pass

    def warning(self, path: bytes, message: str) -> None:
        pass


@dataclass
class BackupRequest:
    paths: Sequence[str]
    client: str
    job: str = "default"
    tags: Sequence[str] = ()
    excludes: Sequence[str] = ()
    time_ns: int | None = None
    hostname: str = ""
    username: str = ""
    program_version: str = ""
    prerequisites: Sequence[str] = ()
    # Stored as files below /stdin; a failing one fails the backup (no snapshot).
    streams: Sequence[StreamSource] = ()


@dataclass
class FileWarning:
    path: str
    message: str


@dataclass
class BackupResult:
    snapshot: Snapshot
    warnings: list[FileWarning] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems that cost no data


class _Batch:
    """Files for one worker task; ``future`` is set once it is handed over."""

    __slots__ = ("files", "future", "size")

    def __init__(self) -> None:
        self.files: list[_PendingFile] = []
        self.size = 0
        self.future: Future[_Counts] | None = None


class _PendingFile:
    """A file a worker reads; ``ok`` turns False when it could not be backed up."""

    __slots__ = ("batch", "known", "node", "ok", "path")

    def __init__(self, path: bytes, node: Node, known: bool, batch: _Batch) -> None:
        self.path, self.node, self.known, self.batch = path, node, known, batch
        self.ok = True


class _Unresolved:
    """A file the files cache calls unchanged, waiting for a remote sink to confirm that
    its chunks are still stored: the question waits for LOOKUP_BATCH such files, from
    as many directories as it takes (one round trip for them all). ``result`` is then
    the file's node, or the _PendingFile that reads it again."""

    __slots__ = ("entry", "node", "path", "result")

    def __init__(self, path: bytes, node: Node, entry: CachedFile) -> None:
        self.path, self.node, self.entry = path, node, entry
        self.result: Node | _PendingFile | None = None


class _Held(NamedTuple):
    """A small file read into memory, waiting for its batch's blobs to be claimed."""

    pending: _PendingFile
    data: bytes
    bid: bytes | None  # None: an empty file
    before: os.stat_result
    after: os.stat_result
    read_start: int


@dataclass
class _PendingDir:
    node: Node
    children: list[Node | _PendingFile | _Unresolved | Future[Node | None] | _PendingDir] = field(
        default_factory=list
    )
    tree_id: bytes | None = None


@dataclass(slots=True)
class _Counts:
    """Summary counts gathered by one task, added to the total once."""

    blobs_new: int = 0
    bytes_new: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0
    bytes_total: int = 0
    dirs: int = 0
    files_changed: int = 0
    files_new: int = 0
    files_read: int = 0
    files_unmodified: int = 0
    other: int = 0


_COUNT_NAMES = tuple(f.name for f in fields(_Counts))


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.summary = Summary()

    def merge(self, counts: _Counts) -> None:
        with self.lock:
            s = self.summary
            for name in _COUNT_NAMES:
                setattr(s, name, getattr(s, name) + getattr(counts, name))


class _SeekableLimited:
    """A reader over ``[offset, offset+length)`` of a file descriptor, for data extents."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + length

    def readinto(self, buf: memoryview) -> int:
        want = min(len(buf), self._end - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [buf[:want]], self._pos)
        self._pos += n
        return n


def _read_small(fd: int, expected: int, limit: int) -> bytes:
    """A small file's bytes, up to ``limit``: one read of the size fstat gave (plus
    one byte, to notice growth), more only when that came back short or long. Asking
    for the size, not the limit, keeps a few-byte file from costing a big buffer."""
    data = os.read(fd, expected + 1)
    if len(data) == expected:
        return data  # the end (a file growing now is caught by the fstat after)
    parts = [data]
    got = len(data)
    while got < limit:
        part = os.read(fd, limit - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the data regions of a sparse file, or None if not sparse."""
    extents = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, min(end, size) - start))
            pos = end
    except OSError as e:
        if e.errno == errno.ENXIO:  # no more data after pos
            return extents
        return None
    return extents


class Archiver:
    def __init__(
        self,
        repo: Repository | None,
        clock: Clock,
        files_cache: FilesCache | None = None,
        progress: ArchiveProgress | None = None,
        workers: int | None = None,
        on_step: Callable[[str], None] | None = None,
        before_commit: Callable[[], None] | None = None,
        sink: BlobSink | None = None,
        scanner: Scanner | None = None,
        lanes: Sequence[Worker] = (),
    ) -> None:
        if sink is None:
            if repo is None:
                raise TypeError("an Archiver needs a repository or a sink")
            sink = RepositorySink(repo, clock, on_step, before_commit)
        self.sink = sink
        self.clock = clock
        self.files_cache = files_cache or FilesCache(None)
        self.progress = progress or _NoProgress()
        # One worker per core: reads are asked for ahead (posix_fadvise), and more threads
        # only fight over the GIL (measured: 3 workers cost 10% more CPU than 2).
        self.workers = (os.cpu_count() or 2) if workers is None else workers
        self._on_step = on_step or (lambda step: None)
        self._local = threading.local()
        self._stats = _Stats()
        self._walked = _Counts()  # the walk's own counts (one thread)
        self._trees: list[tuple[bytes, bytes]] = []  # made by the walk, not yet claimed
        self._trees_size = 0
        self._warnings: list[FileWarning] = []
        self._batch = _Batch()
        self._unresolved: list[_Unresolved] = []  # waiting for one known_contents
        self._in_flight: set[Future[_Counts]] = set()
        # Lists directories ahead of the walk; the caller's (started early) or our own.
        self._scanner = scanner
        # Worker processes set up for this repository: each takes batches too, through
        # a thread of the pool bound to it.
        if lanes and not isinstance(self.sink, RepositorySink):
            raise TypeError("worker processes need a repository sink")
        self._lanes = list(lanes)
        self._free_lanes = lane_slots(lanes)  # a pool thread takes one with its first batch
        if not self._lanes:
            self.workers = max(1, self.workers)  # someone must read the files
        self._failure: BaseException | None = None  # a stream's, noticed by the walk

    @property
    def summary(self) -> Summary:
        """The counts so far (final once ``backup`` or ``archive_stream`` returned)."""
        return self._stats.summary

    # --- blobs ----------------------------------------------------------------------

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self.sink.new_chunker()
            self._local.chunker = chunker
        return chunker

    def _read_buffers(self) -> ReadBuffers:
        buffers: ReadBuffers | None = getattr(self._local, "read_buffers", None)
        if buffers is None:
            buffers = self._local.read_buffers = ReadBuffers()
        return buffers

    def _add_chunks(
        self,
        groups: Iterable[list[memoryview]],
        content: list[bytes | int],
        counts: _Counts,
        *,
        new_file: bool = False,
    ) -> int:
        """Store the chunks the sink lacks, asking about each group at once (a worker
        process asks its parent: one round trip per group, not per chunk). Chunks of
        a file the files cache never saw are offered to the sink with the question,
        to compress while it waits (most are new); a changed file's mostly are not."""
        total = 0
        sink = self.sink
        id_key = sink.id_key
        for group in groups:
            ids = [blob_id(id_key, chunk) for chunk in group]
            granted = sink.claim_many(ids, group if new_file else None)
            for bid, chunk, given in zip(ids, group, granted, strict=True):
                if given:
                    stored = sink.store(DATA, bid, chunk)
                    counts.blobs_new += 1
                    counts.bytes_new += stored.raw_length
                    counts.bytes_stored += stored.stored_length
                content.append(bid)
                total += len(chunk)
        return total

    # --- files ----------------------------------------------------------------------

    def _read_content(
        self, fd: int, st: os.stat_result, new_file: bool
    ) -> tuple[list[bytes | int], int]:
        """Chunk and store a file as it is read from the start (holes skipped): its
        content and the number of bytes read. ``new_file``: not in the files cache."""
        counts: _Counts = self._local.counts  # the batch's, set by _read_batch
        content: list[bytes | int] = []
        size = st.st_size
        chunker = self._chunker()
        if st.st_blocks * 512 < size:
            extents = data_extents(fd, size)
            if extents is not None:
                read = 0
                pos = 0
                for offset, length in extents:
                    if offset > pos:
                        content.append(offset - pos)
                    read += self._add_chunks(
                        chunker.split_groups(_SeekableLimited(fd, offset, length)),
                        content,
                        counts,
                        new_file=new_file,
                    )
                    pos = offset + length
                if size > pos:
                    content.append(size - pos)
                return content, read
        if size > DIRECT_MIN and (reader := open_direct(fd, self._read_buffers())) is not None:
            with reader:
                read = self._add_chunks(
                    chunker.split_groups(reader), content, counts, new_file=new_file
                )
            return content, read
        with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
            read = self._add_chunks(
                chunker.split_groups(stream), content, counts, new_file=new_file
            )
            return content, read

    def _unchanged_files(self, base: bytes, entries: list[Node]) -> dict[bytes, CachedFile]:
        """The files of a directory listing (by name) that the files cache says are
        unchanged and whose chunks the repository still holds: one question to the
        sink for them all (one round trip, where it is a director)."""
        cached: list[tuple[bytes, CachedFile]] = []
        for child in entries:
            if child.type == FILE:
                entry = self.files_cache.lookup(base + child.name, child)
                if entry is not None:
                    cached.append((child.name, entry))
        if not cached:
            return {}
        known = self.sink.known_contents([entry.content for _, entry in cached])
        return {name: entry for (name, entry), ok in zip(cached, known, strict=True) if ok}

    def _add_later(self, path: bytes, node: Node) -> Node | _PendingFile | _Unresolved:
        """``_add_file`` for a remote sink: a file the files cache calls unchanged waits
        (``_Unresolved``) until LOOKUP_BATCH of them, from any directories, can be asked
        about at once; any other file joins a batch now."""
        entry = self.files_cache.lookup(path, node)
        if entry is None:
            return self._add_file(path, node, {})
        waiting = _Unresolved(path, node, entry)
        self._unresolved.append(waiting)
        if len(self._unresolved) >= LOOKUP_BATCH:
            self._resolve()
        return waiting

    def _resolve(self) -> None:
        """Ask the sink about every waiting file's chunks in one question: each becomes
        its unchanged node, or joins a batch to be read again."""
        waiting, self._unresolved = self._unresolved, []
        if not waiting:
            return
        known = self.sink.known_contents([w.entry.content for w in waiting])
        for w, ok in zip(waiting, known, strict=True):
            w.result = self._add_file(w.path, w.node, {w.node.name: w.entry} if ok else {})

    def _add_file(
        self, path: bytes, node: Node, unchanged: dict[bytes, CachedFile] | None = None
    ) -> Node | _PendingFile:
        """An unchanged file's node at once; otherwise the file joins a worker's batch.
        ``node`` is the file's, from its lstat; ``unchanged``: its directory's
        ``_unchanged_files``, when known."""
        self._stop_if_failed()
        if unchanged is None:
            unchanged = self._unchanged_files(path[: -len(node.name)], [node])
        cached = unchanged.get(node.name)
        if cached is not None:
            node.content = cached.content
            node.xattrs = cached.xattrs
            self.files_cache.keep(path)
            self._walked.files_unmodified += 1
            self._walked.bytes_total += node.size
            self.progress.file_done(path, node.size, False)
            return node
        batch = self._batch
        pending = _PendingFile(path, node, self.files_cache.known(path), batch)
        batch.files.append(pending)
        batch.size += node.size
        if len(batch.files) >= BATCH_FILES or batch.size >= BATCH_BYTES:
            self._submit_batch()
        return pending

    def _submit_batch(self) -> None:
        batch = self._batch
        if not batch.files:
            return
        self._batch = _Batch()
        # Bound the work queued ahead of the workers, and so the memory it holds. Wait
        # for any batch, not the oldest: one big file must not leave the others idle.
        limit = 2 * (self.workers + len(self._lanes))
        while len(self._in_flight) >= limit:
            done, _ = wait(self._in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a worker's failure stops the walk here
            self._in_flight = {f for f in self._in_flight if not f.done()}
        batch.future = self._pool.submit(self._run_batch, batch)
        self._in_flight.add(batch.future)

    def _run_batch(self, batch: _Batch) -> _Counts:
        """Back up a batch on this thread, or through the worker process it serves: a
        pool thread takes a worker, while any is free, when it gets its first batch
        (not before: a stream's reader must not hold one)."""
        if not hasattr(self._local, "lane"):
            with self._stats.lock:
                self._local.lane = self._free_lanes.pop() if self._free_lanes else None
        lane: Worker | None = self._local.lane
        return self._read_batch(batch) if lane is None else self._read_remote(lane, batch)

    def _read_remote(self, lane: Worker, batch: _Batch) -> _Counts:
        """Have a worker process back up the batch: answer its claims, index the packs
        it publishes, and take its outcome into the batch's nodes."""
        assert isinstance(self.sink, RepositorySink)
        ticket = lane.begin(
            {
                "op": "batch",
                "files": [[p.path, p.node.inode, p.node.size, p.known] for p in batch.files],
            }
        )
        with lane.turn(ticket):  # another thread's batch may be ahead in the pipe
            while True:
                message = lane.recv()
                op = message.get("op")
                if op == "claim":
                    ids = [bytes(i) for i in message["ids"]]
                    lane.send({"op": "claimed", "granted": self.sink.claim_many(ids)})
                elif op == "pack":
                    self.sink.register_pack(str(message["id"]), pack_entries(message["entries"]))
                elif op == "done":
                    break
        for pending, (ok, content, xattrs, size, changed) in zip(
            batch.files, message["files"], strict=True
        ):
            pending.ok = bool(ok)
            if ok:
                node = pending.node
                node.content = content  # decoded as sent: blob ids (bytes) and holes (ints)
                node.xattrs = [(k, v) for k, v in xattrs] if xattrs else []
                node.size, node.changed = size, changed
                self.progress.file_done(pending.path, node.size, True)
        for path, text in message["warnings"]:
            self._warn(bytes(path), str(text))
        for path, encoded in message["cache"]:
            self.files_cache.keep_encoded(bytes(path), bytes(encoded))
        counts = _Counts(*message["counts"])
        self._stats.merge(counts)
        return counts

    def _end_lanes(self, how: str) -> None:
        """Have each worker process write out its partial pack ("finish": indexed
        here) or throw it away ("discard", after a failure: errors are ignored)."""
        for lane in self._lanes:
            try:
                lane.send({"op": how})
                while (message := lane.recv()).get("op") not in ("finished", "discarded"):
                    if message.get("op") == "pack":
                        assert isinstance(self.sink, RepositorySink)
                        self.sink.register_pack(
                            str(message["id"]), pack_entries(message["entries"])
                        )
            except (WorkerFailed, OSError):
                if how == "finish":
                    raise
        self._lanes = []

    def read_files(self, files: Sequence[tuple[bytes, int, int, bool]]) -> dict[str, Any]:
        """Back up files given as (path, inode, size, seen before) for a parent
        process: per file (ok, content, xattrs, size, changed), and the warnings,
        files cache entries and counts that came of it."""
        batch = _Batch()
        for path, inode, size, known in files:
            node = Node(name=b"", type=FILE, size=size, inode=inode)
            batch.files.append(_PendingFile(path, node, known, batch))
        warned = len(self._warnings)
        counts = self._read_batch(batch)
        return {
            "files": [
                (p.ok, p.node.content, p.node.xattrs, p.node.size, p.node.changed)
                for p in batch.files
            ],
            "warnings": [(os.fsencode(w.path), w.message) for w in self._warnings[warned:]],
            "cache": self.files_cache.take_new(),
            "counts": [getattr(counts, name) for name in _COUNT_NAMES],
        }

    def _open_file(self, path: bytes) -> int:
        return open_noatime(path, FILE_FLAGS)

    def _read_batch(self, batch: _Batch) -> _Counts:
        """Back up a batch of files. All are opened and asked to be read ahead first;
        small ones are read and named, then the sink is asked once which of their
        blobs it lacks; a big file is chunked and stored as it is read."""
        fds: list[int | None] = []
        every_file = not direct_enabled()  # else big files are read ahead by direct.py
        for pending in batch.files:
            try:
                fd = self._open_file(pending.path)
            except OSError as e:
                self._warn(pending.path, f"cannot open: {e.strerror}")
                pending.ok = False
                fds.append(None)
                continue
            size = pending.node.size
            if size and (size <= DIRECT_MIN or every_file):
                try:
                    os.posix_fadvise(fd, 0, min(size, READAHEAD_BYTES), os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass  # only a hint
            fds.append(fd)
        counts = _Counts()
        self._local.counts = counts
        held: list[_Held] = []
        try:
            for i, pending in enumerate(batch.files):
                open_fd = fds[i]
                if open_fd is None:
                    continue
                fds[i] = None
                try:
                    small = self._read_file(pending, open_fd, counts)
                finally:
                    os.close(open_fd)
                if small is not None:
                    held.append(small)
            self._store_small(held, counts)
        finally:
            for left in fds:
                if left is not None:
                    os.close(left)
            self._stats.merge(counts)
        return counts

    def _read_file(self, pending: _PendingFile, fd: int, counts: _Counts) -> _Held | None:
        """Read one file: a small one into memory (returned, to be stored with the rest
        of its batch), a big one chunked and stored as it goes."""
        path, node = pending.path, pending.node
        read_start = self.clock.now_ns()
        min_size = self._chunker().params.min_size
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != node.inode:
                self._warn(path, "replaced by another kind of file during the backup")
                pending.ok = False
                return None
            node.xattrs = read_xattrs(fd)
            if before.st_size <= min_size:
                data = _read_small(fd, before.st_size, min_size + 1)
                if len(data) <= min_size:
                    after = os.fstat(fd)
                    bid = blob_id(self.sink.id_key, data) if data else None
                    return _Held(pending, data, bid, before, after, read_start)
                os.lseek(fd, 0, os.SEEK_SET)  # grew while read: chunk it all
            node.content, read = self._read_content(fd, before, not pending.known)
            after = os.fstat(fd)
        except OSError as e:
            self._warn(path, f"cannot read: {e.strerror}")
            pending.ok = False
            return None
        self._file_read(pending, read, before, after, read_start, counts)
        return None

    def _store_small(self, held: list[_Held], counts: _Counts) -> None:
        """Store the blobs of a batch's small files the sink lacks, asking it once."""
        named = [(h.bid, h.data) for h in held if h.bid is not None]
        granted = iter(self.sink.claim_many([b for b, _ in named], [d for _, d in named]))
        for h in held:
            if h.bid is None:
                h.pending.node.content = []
            else:
                if next(granted):
                    stored = self.sink.store(DATA, h.bid, h.data)
                    counts.blobs_new += 1
                    counts.bytes_new += stored.raw_length
                    counts.bytes_stored += stored.stored_length
                h.pending.node.content = [h.bid]
            self._file_read(h.pending, len(h.data), h.before, h.after, h.read_start, counts)

    def _file_read(
        self,
        pending: _PendingFile,
        read: int,
        before: os.stat_result,
        after: os.stat_result,
        read_start: int,
        counts: _Counts,
    ) -> None:
        """Whether the file changed while read, the files cache, the counts."""
        path, node = pending.path, pending.node
        node.size = read + sum(c for c in node.content if isinstance(c, int))
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ) or node.size != after.st_size:
            node.changed = True
            self._warn(path, "changed while being read; stored as read, will be read again")
            self.files_cache.remember(path, after, [], [], trusted=False)
        elif after.st_mtime_ns < read_start - RACY_WINDOW_NS:
            self.files_cache.remember(path, after, node.content, node.xattrs)
        else:
            # A file modified just before we read it could be modified again within the
            # same timestamp tick without its mtime moving: trust only older mtimes.
            self.files_cache.remember(path, after, [], [], trusted=False)
        if pending.known:
            counts.files_changed += 1
        else:
            counts.files_new += 1
        counts.files_read += 1
        counts.bytes_read += read
        counts.bytes_total += node.size
        self.progress.file_done(path, node.size, True)

    # --- streams --------------------------------------------------------------------

    def archive_stream(self, stream: StreamSource) -> Node:
        """Store a stream's bytes, chunked and deduplicated like a file's; its file node
        (named by the last part of its name), or StreamFailed."""
        parts = stream_parts(stream.name)
        content: list[bytes | int] = []
        counts = _Counts()
        try:
            with stream.open() as pipe:
                read = self._add_chunks(self._chunker().split_groups(pipe), content, counts)
        finally:
            self._stats.merge(counts)
        node = stream_file_node(parts[-1], read, content, self.clock.now_ns())
        counts = _Counts()
        counts.files_new = counts.files_read = 1
        counts.bytes_read = counts.bytes_total = read
        self._stats.merge(counts)
        self.progress.file_done(stream_path(stream.name), read, True)
        return node

    def _start_streams(
        self, streams: Sequence[StreamSource], pool: ThreadPoolExecutor
    ) -> _PendingDir | None:
        """Start reading every stream on the workers; the /stdin directory to come."""
        if not streams:
            return None
        now = self.clock.now_ns()
        top = _PendingDir(stream_dir_node(STREAM_ROOT.lstrip(b"/"), now))
        dirs: dict[tuple[bytes, ...], _PendingDir] = {(): top}
        for stream in streams:
            parts = stream_parts(stream.name)
            parent = top
            for depth in range(1, len(parts)):
                key = tuple(parts[:depth])
                if key not in dirs:
                    dirs[key] = _PendingDir(stream_dir_node(parts[depth - 1], now))
                    parent.children.append(dirs[key])
                parent = dirs[key]
            future: Future[Node | None] = pool.submit(self.archive_stream, stream)
            future.add_done_callback(self._note_failure)
            parent.children.append(future)
        return top

    def _note_failure(self, future: Future[Node | None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._failure = future.exception()

    def _stop_if_failed(self) -> None:
        """A stream failed: stop walking now rather than after the whole tree."""
        if self._failure is not None:
            raise self._failure

    def _finish_tree(self, pending: _PendingDir) -> None:
        """Finish a directory and its unfinished subdirectories, in post-order."""
        for child in pending.children:
            if isinstance(child, _PendingDir) and child.tree_id is None:
                self._finish_tree(child)
        self._finish_dir(pending)

    def _warn(self, path: bytes, message: str) -> None:
        with self._stats.lock:
            self._warnings.append(FileWarning(os.fsdecode(path), message))
            self._stats.summary.errors += 1
        self.progress.warning(path, message)

    # --- directories ----------------------------------------------------------------

    def _walk(self, path: bytes, node: Node, ready: deque[_PendingDir]) -> _PendingDir:
        self._stop_if_failed()
        pending = _PendingDir(node)
        assert self._scanner is not None
        listing = self._scanner.listing(path)
        for problem_path, message in listing.problems:
            self._warn(problem_path, message)
        node.xattrs = listing.xattrs
        base = path.rstrip(b"/") + b"/"
        children = pending.children
        entries = listing.entries
        remote = self.sink.remote
        for at in range(0, len(entries), LOOKUP_BATCH):
            part = entries[at : at + LOOKUP_BATCH]
            unchanged = {} if remote else self._unchanged_files(base, part)
            for child in part:
                if child.type == FILE:
                    children.append(
                        self._add_later(base + child.name, child)
                        if remote
                        else self._add_file(base + child.name, child, unchanged)
                    )
                elif child.type == DIR:
                    self._walked.dirs += 1
                    children.append(self._walk(base + child.name, child, ready))
                else:
                    self._walked.other += 1
                    children.append(child)
        ready.append(pending)
        self._drain(ready, MAX_DIRS_WAITING)
        return pending

    def _drain(self, ready: deque[_PendingDir], keep: int) -> None:
        """Finish directories in post-order: those whose files are all read, and any
        while more than ``keep`` are waiting (the walk waits only then, so the workers
        never run dry for want of the next batch)."""
        while ready and (len(ready) > keep or _files_read(ready[0])):
            self._finish_dir(ready.popleft())

    def _finish_dir(self, pending: _PendingDir) -> None:
        nodes: list[Node] = []
        for item in pending.children:
            child: Node | _PendingFile | Future[Node | None] | _PendingDir
            if isinstance(item, _Unresolved):
                if item.result is None:
                    self._resolve()
                assert item.result is not None
                child = item.result
            else:
                child = item
            if isinstance(child, _PendingFile):
                if child.batch.future is None:  # still filling: hand it over now
                    self._submit_batch()
                assert child.batch.future is not None
                child.batch.future.result()
                if child.ok:
                    nodes.append(child.node)
            elif isinstance(child, Future):
                result = child.result()
                if result is not None:
                    nodes.append(result)
            elif isinstance(child, _PendingDir):
                if child.tree_id is None:
                    raise AssertionError("directory finished before its subdirectory")
                child.node.subtree = child.tree_id
                nodes.append(child.node)
            else:
                nodes.append(child)
        pending.tree_id = self._save_tree(nodes)
        pending.children = []

    def _save_tree(self, nodes: list[Node]) -> bytes:
        """The tree's id at once; the tree itself is stored with others, before the
        backup finishes its packs (``_flush_trees``)."""
        data = encode_tree(nodes)
        bid = blob_id(self.sink.id_key, data)
        self._trees.append((bid, data))
        self._trees_size += len(data)
        if len(self._trees) >= TREE_BATCH or self._trees_size >= TREE_BATCH_BYTES:
            self._flush_trees()
        return bid

    def _flush_trees(self) -> None:
        """Claim the waiting trees in one question; store those nobody has."""
        trees, self._trees, self._trees_size = self._trees, [], 0
        if not trees:
            return
        granted = self.sink.claim_many([bid for bid, _ in trees])
        for (bid, data), new in zip(trees, granted, strict=True):
            if new:
                stored = self.sink.store(TREE, bid, data)
                self._walked.blobs_new += 1
                self._walked.bytes_new += stored.raw_length
                self._walked.bytes_stored += stored.stored_length

    # --- the whole backup -----------------------------------------------------------

    def backup(self, request: BackupRequest) -> BackupResult:
        start = self.clock.monotonic()
        roots = normalize_paths(request.paths, streams=bool(request.streams))
        check_stream_names([s.name for s in request.streams], roots)
        if request.streams and roots == [b"/"] and os.path.lexists(STREAM_ROOT):
            raise UsageError(
                f"{os.fsdecode(STREAM_ROOT)} exists and is backed up: it is where streams go"
            )
        try:
            return self._backup(request, roots, start)
        except BaseException:
            self.files_cache.discard()  # the old cache stays; this run's entries go
            raise

    def _backup(self, request: BackupRequest, roots: list[bytes], start: float) -> BackupResult:
        ready: deque[_PendingDir] = deque()
        own_scanner = self._scanner is None
        if self._scanner is None:
            self._scanner = start_scan(request)
        elif sorted(self._scanner.roots) != sorted(directory_roots(roots)) or (
            self._scanner.excludes != [os.fsencode(p) for p in request.excludes]
        ):
            raise ValueError("the scanner was started for another backup request")
        try:
            with ThreadPoolExecutor(
                self.workers + len(self._free_lanes) + len(request.streams),
                thread_name_prefix="strongroom-file",
            ) as pool:
                self._pool = pool
                try:
                    root_tree = self._archive_roots(roots, request.streams, pool, ready)
                    self._flush_trees()
                except BaseException:
                    self._trees, self._trees_size = [], 0
                    for stream in request.streams:
                        stream.stop()  # or the pool would wait for the command to finish
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._end_lanes("discard")
                    self.sink.discard()
                    raise
        finally:
            if own_scanner:
                self._scanner.close()
                self._scanner = None
            self._stats.merge(self._walked)
            self._walked = _Counts()
        try:
            self._end_lanes("finish")
        except BaseException:
            self._end_lanes("discard")
            self.sink.discard()
            raise
        self.sink.finish()
        cache_problem = self.files_cache.save()
        summary = self._stats.summary
        summary.duration_s = round(self.clock.monotonic() - start, 3)
        snapshot = Snapshot(
            time_ns=request.time_ns if request.time_ns is not None else self.clock.now_ns(),
            tree=root_tree,
            paths=[display_path(p) for p in roots]
            + [display_path(stream_path(s.name)) for s in request.streams],
            client=request.client,
            job=request.job,
            hostname=request.hostname,
            username=request.username,
            tags=sorted(set(request.tags)),
            program_version=request.program_version,
            summary=summary,
            warnings=[f"{display_path(w.path)}: {w.message}" for w in self._warnings[:1000]],
            prerequisites=list(request.prerequisites),
        )
        self._on_step("before-snapshot")
        snapshot.id = self.sink.commit(snapshot)
        self._on_step("snapshot-written")
        return BackupResult(
            snapshot, list(self._warnings), [cache_problem] if cache_problem else []
        )

    def _archive_roots(
        self,
        roots: list[bytes],
        streams: Sequence[StreamSource],
        pool: ThreadPoolExecutor,
        ready: deque[_PendingDir],
    ) -> bytes:
        """Build the snapshot's root tree: each path's ancestors become directories,
        and streams go below /stdin."""
        stream_dir = self._start_streams(streams, pool)
        # A nested dict of path components; a None value marks a backed-up path.
        if roots == [b"/"]:
            whole = self._walk(b"/", node_from_stat(b"", os.lstat(b"/")), ready)
            if stream_dir is not None:  # the root is finished last, by the drain below
                whole.children.append(stream_dir)
                self._finish_tree(stream_dir)
            self._drain(ready, 0)
            assert whole.tree_id is not None
            return whole.tree_id
        layout: dict[bytes, object] = {}
        for root in roots:
            parts = [p for p in root.split(b"/") if p]
            level = layout
            for part in parts[:-1]:
                level = level.setdefault(part, {})  # type: ignore[assignment]
            level[parts[-1]] = None
        if stream_dir is not None:
            layout[STREAM_ROOT.lstrip(b"/")] = stream_dir
        top = self._archive_level(b"", layout, ready, Node(name=b"", type="dir"), queue=False)
        self._drain(ready, 0)
        if stream_dir is not None:
            self._finish_tree(stream_dir)
        self._finish_dir(top)
        assert top.tree_id is not None
        return top.tree_id

    def _archive_level(
        self,
        prefix: bytes,
        layout: dict[bytes, object],
        ready: deque[_PendingDir],
        node: Node,
        *,
        queue: bool = True,
    ) -> _PendingDir:
        """The directory ``prefix`` (``node``) holding backed-up paths below it, queued
        (``queue``) to be finished after them like a walked directory: the walk goes on
        to the next path at once, and the workers are never left waiting for one
        path's last files before the next path's first."""
        children: list[Node | _PendingFile | _Unresolved | Future[Node | None] | _PendingDir] = []
        for name, sub in sorted(layout.items()):
            if isinstance(sub, _PendingDir):  # streams: finished by the caller, last
                children.append(sub)
                continue
            path = prefix + b"/" + name
            try:
                st = os.lstat(path)
            except OSError as e:
                raise UsageError(f"cannot back up {os.fsdecode(path)}: {e.strerror}") from None
            child = node_from_stat(name, st)
            if sub is not None:
                children.append(self._archive_level(path, sub, ready, child))  # type: ignore[arg-type]
            elif stat.S_ISDIR(st.st_mode):
                children.append(self._walk(path, child, ready))
            elif stat.S_ISREG(st.st_mode):
                children.append(self._add_file(path, child))
            else:
                if stat.S_ISLNK(st.st_mode):
                    child.target = os.readlink(path)
                children.append(child)
        holder = _PendingDir(node, children)
        if queue:
            ready.append(holder)
        return holder


def _files_read(pending: _PendingDir) -> bool:
    """Whether every file (and stream) of a walked directory is done with."""
    for item in pending.children:
        child: Node | _PendingFile | Future[Node | None] | _PendingDir
        if isinstance(item, _Unresolved):
            if item.result is None:
                return False
            child = item.result
        else:
            child = item
        if isinstance(child, _PendingFile):
            if child.batch.future is None or not child.batch.future.done():
                return False
        elif isinstance(child, Future) and not child.done():
            return False
    return True


def start_scan(request: BackupRequest, *, process: bool = True) -> Scanner:
    """``scanproc.start_scan`` for what ``request`` backs up."""
    return scanproc.start_scan(
        request.paths, request.excludes, streams=bool(request.streams), process=process
    )
