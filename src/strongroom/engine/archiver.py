"""The archiver: local paths in, a snapshot out.

Directories are walked on the calling thread; regular files are read, chunked,
hashed, compressed and encrypted by a pool of worker threads (the libraries release
the GIL), each filling its own pack. Trees are finished in post-order as soon as their
files are done, so only a bounded amount of work is in flight. Streams (a command's
output, see engine/streams.py) are read by workers too, alongside the walk, and stored
as files below /stdin.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from strongroom.clock import Clock
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.fsmeta import display_path, node_from_stat, open_path, read_xattrs
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
from strongroom.errors import UsageError
from strongroom.repository import DATA, TREE, Chunker, Node, Repository, Snapshot, Summary
from strongroom.repository.crypto import blob_id
from strongroom.repository.tree import encode_tree

# Finished directories waiting to be written as trees, and files queued for workers.
MAX_DIRS_WAITING = 64
MAX_FILES_IN_FLIGHT = 64
# Files modified this close to being read are not trusted to the files cache: file
# timestamps move in ticks (a few ms on Linux, 2 s on FAT), as in git's "racy clean".
RACY_WINDOW_NS = 2_000_000_000


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


@dataclass
class _PendingDir:
    node: Node
    children: list[Node | Future[Node | None] | _PendingDir] = field(default_factory=list)
    tree_id: bytes | None = None


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.summary = Summary()

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self.summary, k, getattr(self.summary, k) + v)


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


def _read_up_to(fd: int, limit: int) -> bytes:
    parts = []
    got = 0
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
    ) -> None:
        if sink is None:
            if repo is None:
                raise TypeError("an Archiver needs a repository or a sink")
            sink = RepositorySink(repo, clock, on_step, before_commit)
        self.sink = sink
        self.clock = clock
        self.files_cache = files_cache or FilesCache(None)
        self.progress = progress or _NoProgress()
        # One more thread than cores: file reads block while the others compute.
        self.workers = workers or (os.cpu_count() or 2) + 1
        self._on_step = on_step or (lambda step: None)
        self._local = threading.local()
        self._stats = _Stats()
        self._warnings: list[FileWarning] = []
        self._excludes: list[bytes] = []
        self._in_flight: deque[Future[Node | None]] = deque()
        self._failure: BaseException | None = None  # a stream's, noticed by the walk

    @property
    def summary(self) -> Summary:
        """The counts so far (final once ``backup`` or ``archive_stream`` returned)."""
        return self._stats.summary

    # --- blobs ----------------------------------------------------------------------

    def _store(self, blob_type: int, bid: bytes, data: bytes | memoryview) -> None:
        stored = self.sink.store(blob_type, bid, data)
        self._stats.add(blobs_new=1, bytes_new=stored.raw_length, bytes_stored=stored.stored_length)

    # --- files ----------------------------------------------------------------------

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self.sink.new_chunker()
            self._local.chunker = chunker
        return chunker

    def _add_chunks(self, chunks: object, content: list[bytes | int]) -> int:
        total = 0
        id_key = self.sink.id_key
        for chunk in chunks:  # type: ignore[attr-defined]
            bid = blob_id(id_key, chunk)
            if self.sink.claim(bid):
                self._store(DATA, bid, chunk)
            content.append(bid)
            total += len(chunk)
        return total

    def _read_content(self, fd: int, st: os.stat_result) -> tuple[list[bytes | int], int]:
        content: list[bytes | int] = []
        size = st.st_size
        chunker = self._chunker()
        if size <= chunker.params.min_size:
            data = _read_up_to(fd, chunker.params.min_size + 1)
            if len(data) > chunker.params.min_size:  # grew while reading: chunk it all
                with self._stream(fd, len(data)) as rest:
                    data += rest.read()
                return content, self._add_chunks(chunker.split(data), content)
            return content, self._add_chunks([data] if data else [], content)
        if st.st_blocks * 512 < size:
            extents = data_extents(fd, size)
            if extents is not None:
                read = 0
                pos = 0
                for offset, length in extents:
                    if offset > pos:
                        content.append(offset - pos)
                    read += self._add_chunks(
                        chunker.split_stream(_SeekableLimited(fd, offset, length)),  # type: ignore[arg-type]
                        content,
                    )
                    pos = offset + length
                if size > pos:
                    content.append(size - pos)
                return content, read
        with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
            return content, self._add_chunks(chunker.split_stream(stream), content)

    def _stream(self, fd: int, offset: int) -> BinaryIO:
        f = os.fdopen(os.dup(fd), "rb", buffering=0)
        f.seek(offset)
        return f

    def _submit_file(
        self, pool: ThreadPoolExecutor, path: bytes, node: Node, st: os.stat_result
    ) -> Node | Future[Node | None]:
        """An unchanged file's node at once; otherwise a worker reads the file."""
        self._stop_if_failed()
        cached = self.files_cache.lookup(path, st)
        if cached is not None and all(
            isinstance(c, int) or self.sink.known(c) for c in cached.content
        ):
            node.content = list(cached.content)
            node.xattrs = list(cached.xattrs)
            self.files_cache.remember(path, st, node.content, node.xattrs)
            self._stats.add(files_unmodified=1, bytes_total=st.st_size)
            self.progress.file_done(path, st.st_size, False)
            return node
        # Bound the work queued ahead of the workers, and so the memory it holds.
        while len(self._in_flight) >= MAX_FILES_IN_FLIGHT:
            oldest = self._in_flight.popleft()
            wait([oldest])
        future = pool.submit(self._file, path, node, st, self.files_cache.known(path))
        self._in_flight.append(future)
        return future

    def _file(self, path: bytes, node: Node, st: os.stat_result, known: bool) -> Node | None:
        read_start = self.clock.now_ns()
        try:
            fd = open_path(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            self._warn(path, f"cannot open: {e.strerror}")
            return None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != st.st_ino:
                self._warn(path, "replaced by another kind of file during the backup")
                return None
            node.xattrs = read_xattrs(fd)
            node.content, read = self._read_content(fd, before)
            after = os.fstat(fd)
        except OSError as e:
            self._warn(path, f"cannot read: {e.strerror}")
            return None
        finally:
            os.close(fd)
        node.size = read + sum(c for c in node.content if isinstance(c, int))
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ) or node.size != after.st_size:
            node.changed = True
            self._warn(path, "changed while being read; stored as read, will be read again")
        elif after.st_mtime_ns < read_start - RACY_WINDOW_NS:
            # A file modified just before we read it could be modified again within the
            # same timestamp tick without its mtime moving: trust only older mtimes.
            self.files_cache.remember(path, after, node.content, node.xattrs)
        self._stats.add(
            files_new=0 if known else 1,
            files_changed=1 if known else 0,
            files_read=1,
            bytes_read=read,
            bytes_total=node.size,
        )
        self.progress.file_done(path, node.size, True)
        return node

    # --- streams --------------------------------------------------------------------

    def archive_stream(self, stream: StreamSource) -> Node:
        """Store a stream's bytes, chunked and deduplicated like a file's; its file node
        (named by the last part of its name), or StreamFailed."""
        parts = stream_parts(stream.name)
        content: list[bytes | int] = []
        with stream.open() as pipe:
            read = self._add_chunks(self._chunker().split_stream(pipe), content)
        node = stream_file_node(parts[-1], read, content, self.clock.now_ns())
        self._stats.add(files_new=1, files_read=1, bytes_read=read, bytes_total=read)
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

    def _excluded(self, path: bytes, name: bytes) -> bool:
        for pattern in self._excludes:
            target = path if b"/" in pattern else name
            if fnmatch.fnmatchcase(target, pattern):
                return True
        return False

    def _walk(
        self, path: bytes, node: Node, pool: ThreadPoolExecutor, ready: deque[_PendingDir]
    ) -> _PendingDir:
        self._stop_if_failed()
        pending = _PendingDir(node)
        try:
            fd = open_path(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            self._warn(path, f"cannot open directory: {e.strerror}")
            ready.append(pending)
            return pending
        try:
            node.xattrs = read_xattrs(fd)
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
            for entry in entries:
                name = os.fsencode(entry.name)
                child_path = path.rstrip(b"/") + b"/" + name
                if self._excluded(child_path, name):
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        self._warn(child_path, f"cannot stat: {e.strerror}")
                    continue
                child = node_from_stat(name, st)
                if stat.S_ISDIR(st.st_mode):
                    self._stats.add(dirs=1)
                    pending.children.append(self._walk(child_path, child, pool, ready))
                elif stat.S_ISREG(st.st_mode):
                    pending.children.append(self._submit_file(pool, child_path, child, st))
                else:
                    if stat.S_ISLNK(st.st_mode):
                        try:
                            child.target = os.readlink(name, dir_fd=fd)
                        except OSError as e:
                            self._warn(child_path, f"cannot read link: {e.strerror}")
                            continue
                    self._stats.add(other=1)
                    pending.children.append(child)
        except OSError as e:
            self._warn(path, f"cannot read directory: {e.strerror}")
        finally:
            os.close(fd)
        ready.append(pending)
        self._drain(ready, MAX_DIRS_WAITING)
        return pending

    def _drain(self, ready: deque[_PendingDir], keep: int) -> None:
        """Finish directories in post-order while more than ``keep`` are waiting."""
        while len(ready) > keep:
            self._finish_dir(ready.popleft())

    def _finish_dir(self, pending: _PendingDir) -> None:
        nodes: list[Node] = []
        for child in pending.children:
            if isinstance(child, Future):
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
        data = encode_tree(nodes)
        bid = blob_id(self.sink.id_key, data)
        if self.sink.claim(bid):
            self._store(TREE, bid, data)
        return bid

    # --- the whole backup -----------------------------------------------------------

    def backup(self, request: BackupRequest) -> BackupResult:
        start = self.clock.monotonic()
        self._excludes = [os.fsencode(p) for p in request.excludes]
        roots = _normalize_paths(request.paths, streams=bool(request.streams))
        check_stream_names([s.name for s in request.streams], roots)
        if request.streams and roots == [b"/"] and os.path.lexists(STREAM_ROOT):
            raise UsageError(
                f"{os.fsdecode(STREAM_ROOT)} exists and is backed up: it is where streams go"
            )
        ready: deque[_PendingDir] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="strongroom-file") as pool:
            try:
                root_tree = self._archive_roots(roots, request.streams, pool, ready)
            except BaseException:
                for stream in request.streams:
                    stream.stop()  # or the pool would wait for the command to finish
                pool.shutdown(wait=True, cancel_futures=True)
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
            whole = self._walk(b"/", node_from_stat(b"", os.lstat(b"/")), pool, ready)
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
        top = self._archive_level(b"", layout, pool, ready)
        self._drain(ready, 0)
        return top

    def _archive_level(
        self,
        prefix: bytes,
        layout: dict[bytes, object],
        pool: ThreadPoolExecutor,
        ready: deque[_PendingDir],
    ) -> bytes:
        children: list[Node | Future[Node | None] | _PendingDir] = []
        for name, sub in sorted(layout.items()):
            if isinstance(sub, _PendingDir):  # streams: finished after the walk
                children.append(sub)
                continue
            path = prefix + b"/" + name
            try:
                st = os.lstat(path)
            except OSError as e:
                raise UsageError(f"cannot back up {os.fsdecode(path)}: {e.strerror}") from None
            node = node_from_stat(name, st)
            if sub is not None:
                self._drain(ready, 0)
                node.subtree = self._archive_level(path, sub, pool, ready)  # type: ignore[arg-type]
                children.append(node)
            elif stat.S_ISDIR(st.st_mode):
                children.append(self._walk(path, node, pool, ready))
            elif stat.S_ISREG(st.st_mode):
                children.append(self._submit_file(pool, path, node, st))
            else:
                if stat.S_ISLNK(st.st_mode):
                    node.target = os.readlink(path)
                children.append(node)
        self._drain(ready, 0)
        for child in children:
            if isinstance(child, _PendingDir) and child.tree_id is None:
                self._finish_tree(child)
        holder = _PendingDir(Node(name=b"", type="dir"), children)
        self._finish_dir(holder)
        assert holder.tree_id is not None
        return holder.tree_id


def _normalize_paths(paths: Sequence[str], *, streams: bool = False) -> list[bytes]:
    """Absolute, normalized paths with any path inside another one dropped."""
    if not paths and not streams:
        raise UsageError("nothing to back up: give at least one path or stream")
    result: list[bytes] = []
    for p in sorted({os.path.normpath(os.path.abspath(os.fsencode(p))) for p in paths}):
        if p == b"/":
            return [b"/"]
        if not any(p.startswith(r + b"/") for r in result):
            result.append(p)
    return result
