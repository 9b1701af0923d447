"""The restorer: a snapshot in, files under a target directory out.

Safety rules: every name is checked (no ``/``, ``..``, NUL or empty names); every
directory is opened with O_NOFOLLOW relative to its parent's descriptor, so nothing
is ever written outside the target through a symlink; a file appears under its real
name only once all its data has been authenticated: a file held by one blob is created
after that blob was decrypted and checked, a larger one is written under a temporary
name and renamed into place when its last blob is in.

Speed: the walk plans the files of a window (directories are made as it goes), then
workers read each pack the window needs once, front to back, and write every file its
blobs belong to. A source without packs (a director, over the agent) is read file by
file instead.
"""

from __future__ import annotations

import errno
import fnmatch
import itertools
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from strongroom.backend import Backend, ObjectNotFound, load_into
from strongroom.engine.direct import object_ranges
from strongroom.engine.walk import load_tree
from strongroom.engine.workers import Worker, lane_slots
from strongroom.errors import IntegrityError, StorageError, StrongroomError, UsageError
from strongroom.fdcache import ThreadFdCache
from strongroom.repository import DATA, Node, Repository, Snapshot
from strongroom.repository.compression import thread_buffer
from strongroom.repository.crypto import blob_id
from strongroom.repository.index import BlobLocation
from strongroom.repository.pack import PackEntry, open_blob_transient, pack_name
from strongroom.repository.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    is_safe_name,
)

TEMP_PREFIX = b".strongroom-tmp-"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Needed blobs of a pack are read together, in pieces of about this size, reading
# through gaps of unneeded data no longer than READ_GAP.
READ_SIZE = 4 << 20
READ_GAP = 256 << 10
# One worker's job: neighbouring files, up to this many or this much data. Jobs are
# handed out as the walk plans them; this many per worker wait at most (which bounds
# the memory a huge restore takes).
JOB_FILES = 256
JOB_BYTES = 16 << 20
JOBS_AHEAD = 4
# Directory descriptors each worker keeps open.
DIR_CACHE = 64


class RestoreProgress(Protocol):
    def file_done(self, path: bytes, size: int) -> None: ...
    def warning(self, path: bytes, message: str) -> None: ...


class _NoProgress:
    def file_done(self, path: bytes, size: int) -> None:
        pass

    def warning(self, path: bytes, message: str) -> None:
        pass


@dataclass
class RestoreRequest:
    target: str
    includes: Sequence[str] = ()
    excludes: Sequence[str] = ()
    verify: bool = False
    restore_owner: bool | None = None  # default: when running as root


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    other: int = 0
    bytes: int = 0
    verified: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files not restored: damaged data


def open_dir_chain(root_fd: int, parts: Sequence[bytes]) -> int:
    """Open ``root/parts...`` without following any symlink on the way."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class BlobSource(Protocol):
    """Where the restorer gets trees and file data: a repository, or a director."""

    id_key: bytes

    def tree(self, tree_id: bytes) -> list[Node]: ...

    def blob(self, bid: bytes) -> bytes: ...

    def blob_size(self, bid: bytes) -> int | None: ...

    def want(self, bids: list[bytes]) -> None:
        """Say which blobs this thread asks for next, in order (a remote source fetches
        them several at a time)."""


class RepositorySource:
    """A repository as a BlobSource, which can also read a pack's blobs in one go."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.id_key = repo.master.id_key

    def tree(self, tree_id: bytes) -> list[Node]:
        return load_tree(self.repo, tree_id)

    def blob(self, bid: bytes) -> bytes:
        return self.repo.load_blob(bid, DATA)

    def blob_size(self, bid: bytes) -> int | None:
        loc = self.repo.lookup(bid)
        return None if loc is None else loc.raw_length

    def locate(self, bid: bytes) -> BlobLocation | None:
        return self.repo.lookup(bid)

    def want(self, bids: list[bytes]) -> None:
        pass  # packs are read whole (pack_blobs)

    def pack_blobs(
        self, pack_id: str, entries: list[PackEntry]
    ) -> Iterator[tuple[PackEntry, bytes | memoryview | StrongroomError]]:
        """Each entry's plaintext (authenticated, checked against its id), or the
        error that says why not; ``entries`` sorted by offset. Neighbouring blobs are
        read together, in pieces of about READ_SIZE. A plaintext may be a view of a
        reused buffer: it is valid only until the next one is taken."""
        repo = self.repo
        try:
            cipher = repo.pack_cipher(pack_id)
        except ObjectNotFound as e:
            missing = IntegrityError(f"pack {pack_id[:8]} is missing ({e})")
            for entry in entries:
                yield entry, missing
            return
        except (IntegrityError, StorageError) as e:
            for entry in entries:
                yield entry, e
            return
        groups = _read_groups(entries)
        for group, data in zip(groups, self._read_packed(pack_id, groups), strict=True):
            if isinstance(data, StrongroomError):
                for entry in group:
                    yield entry, data
                continue
            start = group[0].offset
            for entry in group:
                what = f"blob {entry.id.hex()[:16]}"
                at = entry.offset - start
                try:
                    ciphertext = data[at : at + entry.length]
                    yield (
                        entry,
                        open_blob_transient(repo.master, cipher, entry, ciphertext, what),
                    )
                except IntegrityError as e:
                    yield entry, e

    def _read_packed(
        self, pack_id: str, groups: list[list[PackEntry]]
    ) -> Iterator[memoryview | StrongroomError]:
        """The bytes of each group of a pack's entries (from the first one's offset to
        the end of the last), or the error that stands for them. Each view is valid
        until the next is taken. Where the repository is a local directory whose pack
        is not in the page cache, the pack is read around it, the next group while this
        one is used (engine/direct.py): else a group at a time, into a buffer this
        thread reuses (a fresh one costs page faults)."""
        name = pack_name(pack_id)
        backend = self.repo.backend
        ranges = [(g[0].offset, g[-1].offset + g[-1].length - g[0].offset) for g in groups]
        try:
            pieces = object_ranges(backend, name, ranges)
        except ObjectNotFound as e:
            pieces = iter([e] * len(ranges))
        except StorageError:
            pieces = None  # read as before, which says what is wrong
        for data in pieces if pieces is not None else _loaded(backend, name, ranges):
            if isinstance(data, ObjectNotFound):
                yield IntegrityError(f"pack {pack_id[:8]} is missing ({data})")
            else:
                yield data


def _loaded(
    backend: Backend, name: str, ranges: list[tuple[int, int]]
) -> Iterator[memoryview | StrongroomError]:
    """Each range of object ``name`` loaded into a buffer this thread reuses (a fresh
    one costs page faults), or the error that stands for it."""
    for start, length in ranges:
        data = thread_buffer("pack_read", length)[:length]
        try:
            load_into(backend, name, start, data)
        except (IntegrityError, StorageError) as e:
            yield e
        else:
            yield data


def _read_groups(entries: list[PackEntry]) -> list[list[PackEntry]]:
    """Entries (by offset) in runs to read at once: up to READ_SIZE, skipping no more
    than READ_GAP of unneeded bytes between two of them."""
    groups: list[list[PackEntry]] = []
    start = end = 0
    for entry in entries:
        if (
            not groups
            or entry.offset + entry.length - start > READ_SIZE
            or entry.offset - end > READ_GAP
        ):
            groups.append([])
            start = entry.offset
        groups[-1].append(entry)
        end = entry.offset + entry.length
    return groups


class _File:
    """A file to restore: where its blobs go, and how many are still to come."""

    __slots__ = (
        "blobs", "direct", "done", "failed", "fd", "left", "lock", "node", "parts", "size",
        "temp", "written",
    )  # fmt: skip

    def __init__(
        self,
        parts: tuple[bytes, ...],
        node: Node,
        blobs: list[tuple[str, PackEntry, int]],
        size: int,
        count: int | None = None,
    ) -> None:
        self.parts, self.node, self.size = parts, node, size
        # Where each blob is (pack, entry) and goes (offset); empty for a source
        # without packs, which says ``count``.
        self.blobs = blobs
        count = len(blobs) if count is None else count
        # Writes still to come (a file without data gets one, with no bytes).
        self.left = max(count, 1)
        # One blob, authenticated before the file is created: no temporary name needed.
        self.direct = count <= 1
        self.fd: int | None = None
        self.temp: bytes | None = None  # written under this name, renamed at the end
        self.failed = False
        self.done = False
        self.written = 0
        self.lock = threading.Lock()


class Restorer:
    def __init__(
        self,
        repo: Repository | None,
        progress: RestoreProgress | None = None,
        workers: int | None = None,
        source: BlobSource | None = None,
        lanes: Sequence[Worker] = (),
    ) -> None:
        if source is None:
            if repo is None:
                raise TypeError("a Restorer needs a repository or a source")
            source = RepositorySource(repo)
        self.source = source
        self.progress = progress or _NoProgress()
        self.workers = (os.cpu_count() or 2) if workers is None else workers
        self._lock = threading.Lock()
        self._result = RestoreResult()
        self._owner = os.geteuid() == 0
        self._temp_names = itertools.count()
        # Each worker thread's open directories (thread id -> parts -> fd).
        self._dir_fds = ThreadFdCache(DIR_CACHE)
        self._setgid: dict[tuple[bytes, ...], bool] = {}
        self._ids = (os.geteuid(), os.getegid())  # the owner new files get
        # Worker processes set up for this restore: each takes jobs through a thread of
        # the pool bound to it.
        self._lanes = list(lanes)
        self._free_lanes = lane_slots(lanes)  # a pool thread takes one as it starts
        if not self._lanes:
            self.workers = max(1, self.workers)  # someone must write the files
        self._local = threading.local()

    def restore(self, snapshot: Snapshot, request: RestoreRequest) -> RestoreResult:
        return self.restore_tree(snapshot.tree, request)

    def restore_tree(self, tree_id: bytes, request: RestoreRequest) -> RestoreResult:
        if request.restore_owner is not None:
            self._owner = request.restore_owner
        self._includes = [os.fsencode(p) for p in request.includes]
        self._excludes = [os.fsencode(p) for p in request.excludes]
        # Files are created with their mode where the umask allows it (no chmod then).
        self._umask = _current_umask()
        try:
            os.makedirs(request.target, exist_ok=True)
            root_fd = os.open(request.target, DIR_FLAGS)
            self._root_fd = root_fd
            root = os.fstat(root_fd)
        except OSError as e:
            raise UsageError(f"cannot use target {request.target}: {e.strerror}") from None
        try:
            for lane in self._lanes:  # the same directory, or they refuse
                lane.send(
                    {
                        "op": "target",
                        "path": os.fsencode(os.path.abspath(request.target)),
                        "device": root.st_dev,
                        "inode": root.st_ino,
                        "owner": self._owner,
                    }
                )
                lane.recv()
        except BaseException:
            os.close(root_fd)
            raise
        self._hardlinks: dict[tuple[int, int], tuple[bytes, ...]] = {}
        self._deferred_links: list[tuple[tuple[bytes, ...], Node, tuple[bytes, ...]]] = []
        self._dirs: list[tuple[tuple[bytes, ...], Node]] = []
        # Restored files, kept for --verify only (a node per file adds up).
        self._verify_files = request.verify
        self._files: list[tuple[tuple[bytes, ...], Node]] = []
        self._job: list[_File] = []
        self._job_bytes = 0
        self._in_flight: set[Future[None]] = set()
        try:
            with ThreadPoolExecutor(
                self.workers + len(self._free_lanes),
                thread_name_prefix="strongroom-restore",
                initializer=self._bind_lane,
            ) as pool:
                self._pool = pool
                try:
                    self._restore_tree(root_fd, (), tree_id)
                    self._submit_job()
                    self._wait_jobs(0)
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._close_dir_fds()
            for parts, node, first in self._deferred_links:
                self._link(root_fd, parts, node, first)
            # Directory times last, deepest first, so writing children cannot change them.
            try:
                for parts, node in sorted(self._dirs, key=lambda d: -len(d[0])):
                    self._set_dir_metadata(parts, node)
                if request.verify:
                    self._verify()
            finally:
                self._close_dir_fds()
        finally:
            os.close(root_fd)
        return self._result

    # --- selection ------------------------------------------------------------------

    def _selected(self, parts: tuple[bytes, ...], is_dir: bool) -> bool | None:
        """True: restore; False: skip entirely; None: a directory to look inside.
        Without patterns everything is restored, and no path is built."""
        if not (self._includes or self._excludes):
            return True
        path = b"/" + b"/".join(parts)
        name = parts[-1]
        for pattern in self._excludes:
            if fnmatch.fnmatchcase(path if b"/" in pattern else name, pattern):
                return False
        if not self._includes:
            return True
        for pattern in self._includes:
            if fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern.rstrip(b"/") + b"/"):
                return True
        return None if is_dir else False

    # --- walking --------------------------------------------------------------------

    def _warn(self, parts: Sequence[bytes], message: str) -> None:
        path = b"/" + b"/".join(parts)
        with self._lock:
            self._result.warnings.append(f"{os.fsdecode(path)}: {message}")
        self.progress.warning(path, message)

    def _error(self, parts: Sequence[bytes], message: str) -> None:
        with self._lock:
            self._result.errors.append(f"{os.fsdecode(b'/' + b'/'.join(parts))}: {message}")

    def _restore_tree(
        self, dir_fd: int, parts: tuple[bytes, ...], tree_id: bytes, fresh: bool = False
    ) -> bool:
        """Restore one directory's entries; True when anything was restored. ``fresh``:
        this restore just made the directory (so nothing is in the way in it, and it
        has no setgid bit yet)."""
        try:
            nodes = self.source.tree(tree_id)
        except IntegrityError as e:
            self._error(parts, f"directory listing lost: {e}")
            return False
        seen: set[bytes] = set()
        restored_any = False
        for node in nodes:
            if not is_safe_name(node.name) or node.name.startswith(TEMP_PREFIX):
                self._warn(parts, f"skipped an entry with an unsafe name {node.name!r}")
                continue
            if node.name in seen:
                self._warn((*parts, node.name), "skipped a duplicate entry")
                continue
            seen.add(node.name)
            child = (*parts, node.name)
            choice = self._selected(child, node.type == DIR)
            if choice is False:
                continue
            if node.type == DIR:
                restored_any |= self._restore_dir(dir_fd, child, node, choice is True)
            elif choice:
                self._restore_entry(dir_fd, child, node, fresh)
                restored_any = True
        return restored_any

    def _restore_dir(
        self, dir_fd: int, parts: tuple[bytes, ...], node: Node, selected: bool
    ) -> bool:
        name = parts[-1]
        created = False
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                self._warn(parts, "exists and is not a directory; not replaced")
                return False
        try:
            child_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            self._warn(parts, f"cannot open directory: {e.strerror}")
            return False
        try:
            inner = (
                self._restore_tree(child_fd, parts, node.subtree, created)
                if node.subtree
                else False
            )
        finally:
            os.close(child_fd)
        if not (selected or inner):
            if created:
                os.rmdir(name, dir_fd=dir_fd)
            return False
        with self._lock:
            self._result.dirs += 1
        self._dirs.append((parts, node))
        return True

    def _restore_entry(
        self, dir_fd: int, parts: tuple[bytes, ...], node: Node, fresh: bool = False
    ) -> None:
        name = parts[-1]
        if node.type == FILE:
            if node.links > 1:
                key = (node.device, node.inode)
                first = self._hardlinks.get(key)
                if first is not None:
                    self._deferred_links.append((parts, node, first))
                    return
                self._hardlinks[key] = parts
            self._plan_file(parts, node)
            return
        try:
            if not fresh:
                self._remove_existing(dir_fd, name)
            if node.type == SYMLINK:
                os.symlink(node.target or b"", name, dir_fd=dir_fd)
            elif node.type == FIFO:
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
            elif node.type in (CHARDEV, BLOCKDEV, SOCKET):
                kind = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, SOCKET: stat.S_IFSOCK}
                os.mknod(name, 0o600 | kind[node.type], node.rdev, dir_fd=dir_fd)
        except (OSError, OverflowError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self._warn(parts, f"cannot create {node.type}: {reason}")
            return
        self._set_metadata(parts, node, dir_fd=dir_fd, name=name, created=fresh)
        with self._lock:
            self._result.other += 1

    def _remove_existing(self, dir_fd: int, name: bytes) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "a directory is in the way")
        os.unlink(name, dir_fd=dir_fd)

    # --- planning -------------------------------------------------------------------

    def _plan_file(self, parts: tuple[bytes, ...], node: Node) -> None:
        """Note where each of the file's blobs is; hand out a job's worth at a time."""
        if not isinstance(self.source, RepositorySource):
            count = sum(1 for item in node.content if not isinstance(item, int))
            file = _File(parts, node, [], 0, count)  # sizes come with the data
        else:
            blobs: list[tuple[str, PackEntry, int]] = []
            offset = 0
            for item in node.content:
                if isinstance(item, int):
                    offset += item  # a hole: left unwritten, so it stays a hole
                    continue
                loc = self.source.locate(item)
                if loc is None or loc.type != DATA:
                    self._error(parts, f"not restored: blob {item.hex()[:16]} is not in the index")
                    return
                blobs.append((loc.pack_id, loc.entry(item), offset))
                offset += loc.raw_length
            file = _File(parts, node, blobs, offset)
        self._job.append(file)
        self._job_bytes += file.size
        if len(self._job) >= JOB_FILES or self._job_bytes >= JOB_BYTES:
            self._submit_job()

    def _submit_job(self) -> None:
        job, self._job, self._job_bytes = self._job, [], 0
        if job:
            self._wait_jobs(JOBS_AHEAD * (self.workers + len(self._lanes)) - 1)
            self._in_flight.add(self._pool.submit(self._run_job, job))

    def _wait_jobs(self, keep: int) -> None:
        """Wait while more than ``keep`` jobs are in flight: for any of them, not the
        oldest (one big file must not leave the other workers idle)."""
        while len(self._in_flight) > keep:
            done, _ = wait(self._in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a failure stops the walk here
            self._in_flight = {f for f in self._in_flight if not f.done()}

    def _bind_lane(self) -> None:
        """Pool thread start: bind to a worker process, while any is unbound."""
        with self._lock:
            self._local.lane = self._free_lanes.pop() if self._free_lanes else None

    def _run_job(self, files: list[_File]) -> None:
        lane: Worker | None = getattr(self._local, "lane", None)
        if lane is not None:
            self._restore_remote(lane, files)
        elif isinstance(self.source, RepositorySource):
            self._restore_files(files)
        else:
            self.source.want([c for f in files for c in f.node.content if isinstance(c, bytes)])
            for file in files:
                self._fetch_file(file)

    def _restore_files(self, files: list[_File]) -> None:
        """Restore files of a repository: each pack they need read once, in order."""
        assert isinstance(self.source, RepositorySource)
        packs: dict[str, dict[bytes, tuple[PackEntry, list[tuple[_File, int]]]]] = {}
        for file in files:
            if not file.blobs:
                self._put(file, 0, None)
            for pack_id, entry, at in file.blobs:
                wanted = packs.setdefault(pack_id, {})
                if entry.id in wanted:
                    wanted[entry.id][1].append((file, at))
                else:
                    wanted[entry.id] = (entry, [(file, at)])
        for pack_id, wanted in packs.items():
            self._fetch_pack(self.source, pack_id, wanted)

    def _restore_remote(self, lane: Worker, files: list[_File]) -> None:
        """Have a worker process restore the files; take in what became of each."""
        ticket = lane.begin({"op": "restore", "files": [_file_job(file) for file in files]})
        with lane.turn(ticket):  # another thread's job may be ahead in the pipe
            reply = lane.recv()
        for file, (done, written) in zip(files, reply["files"], strict=True):
            if done:
                file.written = int(written)
                self._finished(file)
        with self._lock:
            self._result.warnings += [str(w) for w in reply["warnings"]]
            self._result.errors += [str(e) for e in reply["errors"]]
        for warning in reply["warnings"]:
            self.progress.warning(b"", str(warning))

    def attach_target(self, path: bytes, identity: tuple[int, int], *, owner: bool) -> None:
        """In a worker process: restore under the directory a parent opened (refused
        unless ``path`` still is that directory)."""
        try:
            fd = os.open(path, DIR_FLAGS)
        except OSError as e:
            raise UsageError(f"cannot use target {os.fsdecode(path)}: {e.strerror}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            os.close(fd)
            raise UsageError(f"target {os.fsdecode(path)} was replaced during the restore")
        self._root_fd = fd
        self._owner = owner
        self._umask = _current_umask()
        self._verify_files = False

    def detach_target(self) -> None:
        self._close_dir_fds()
        if getattr(self, "_root_fd", None) is not None:
            os.close(self._root_fd)
            del self._root_fd

    def restore_files(self, jobs: list[Any]) -> dict[str, Any]:
        """Restore files a parent process planned (``_file_job``); what became of each,
        and the warnings and errors they gave."""
        files = [
            _File(
                tuple(bytes(p) for p in parts),
                msgspec.msgpack.decode(node, type=Node),
                [
                    (str(pack), PackEntry(int(t), bytes(i), int(o), int(n), int(r), int(f)), at)
                    for pack, t, i, o, n, r, f, at in blobs
                ],
                int(size),
            )
            for parts, node, size, blobs in jobs
        ]
        warned, erred = len(self._result.warnings), len(self._result.errors)
        self._restore_files(files)
        return {
            "files": [(file.done, file.written) for file in files],
            "warnings": self._result.warnings[warned:],
            "errors": self._result.errors[erred:],
        }

    # --- fetching -------------------------------------------------------------------

    def _fetch_pack(
        self,
        source: RepositorySource,
        pack_id: str,
        wanted: dict[bytes, tuple[PackEntry, list[tuple[_File, int]]]],
    ) -> None:
        entries = sorted((entry for entry, _ in wanted.values()), key=lambda e: e.offset)
        for entry, data in source.pack_blobs(pack_id, entries):
            for file, at in wanted[entry.id][1]:
                self._put(file, at, data)

    def _fetch_file(self, file: _File) -> None:
        """A source without packs: the file's blobs one by one, in order, then the
        size (holes at the end included) and the finishing write."""
        at = 0
        if _has_data(file.node):
            file.left += 1  # the finishing write, once the size is known
        for item in file.node.content:
            if isinstance(item, int):
                at += item
                continue
            try:
                data: bytes | StrongroomError = self.source.blob(item)
            except (IntegrityError, StorageError) as e:
                data = e
            self._put(file, at, data)
            if file.failed:
                return
            assert isinstance(data, bytes)
            at += len(data)
        file.size = at
        self._put(file, at, None)

    # --- writing --------------------------------------------------------------------

    def _put(self, file: _File, at: int, data: bytes | memoryview | StrongroomError | None) -> None:
        """One write into ``file`` (a blob's data at ``at``, or None: no data); the
        last finishes it. An error drops the file: it never appears under its name."""
        with file.lock:
            if file.failed:
                return
            if isinstance(data, StrongroomError):
                self._drop(file, f"not restored: {data}")
                return
            try:
                if file.fd is None:
                    self._create(file)
                assert file.fd is not None
                if data is not None:
                    view = memoryview(data)
                    pos = at
                    while view:
                        n = os.pwrite(file.fd, view, pos)
                        view = view[n:]
                        pos += n
                    file.written += len(data)
                file.left -= 1
                if file.left == 0:
                    self._complete(file)
            except OSError as e:
                self._drop(file, f"cannot write: {e.strerror}", warning=True)

    def _create(self, file: _File) -> None:
        """Open the file for writing: under its own name when one blob (already
        authenticated) fills it and nothing is there yet, else under a temporary name."""
        dir_fd = self._dir_fd(file.parts[:-1])
        mode = file.node.mode & 0o777
        if file.direct:
            try:
                file.fd = os.open(file.parts[-1], NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
                return
            except FileExistsError:
                pass  # replaced by rename, which never follows or replaces a directory
        temp = TEMP_PREFIX + b"%d-%d" % (os.getpid(), next(self._temp_names))
        file.fd = os.open(temp, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        file.temp = temp

    def _complete(self, file: _File) -> None:
        fd = file.fd
        assert fd is not None
        try:
            if file.size > file.written:
                os.ftruncate(fd, file.size)  # holes at the end
            created = file.temp is None and not self._setgid_dir(file.parts[:-1])
            self._set_metadata(file.parts, file.node, fd=fd, created=created)
        finally:
            os.close(fd)
            file.fd = None
        if file.temp is not None:
            dir_fd = self._dir_fd(file.parts[:-1])
            # rename() refuses to replace a directory (EISDIR) and replaces a symlink
            # itself, never what it points to.
            os.rename(file.temp, file.parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            file.temp = None
        self._finished(file)

    def _finished(self, file: _File) -> None:
        """Count a file restored (here, or by a worker process)."""
        file.done = True
        with self._lock:
            self._result.files += 1
            self._result.bytes += file.written
            if self._verify_files:
                self._files.append((file.parts, file.node))
        self.progress.file_done(b"/" + b"/".join(file.parts), file.written)

    def _drop(self, file: _File, message: str, *, warning: bool = False) -> None:
        file.failed = True
        if file.fd is not None:
            os.close(file.fd)
            file.fd = None
            name = file.temp if file.temp is not None else file.parts[-1]
            try:
                _unlink_quietly(self._dir_fd(file.parts[:-1]), name)
            except OSError:
                pass
        if warning:
            self._warn(file.parts, message)
        else:
            self._error(file.parts, message)

    def _setgid_dir(self, parts: tuple[bytes, ...]) -> bool:
        """Whether a target directory has the setgid bit (new files then take its group)."""
        setgid = self._setgid.get(parts)
        if setgid is None:
            setgid = self._setgid[parts] = bool(
                os.fstat(self._dir_fd(parts)).st_mode & stat.S_ISGID
            )
        return setgid

    def _dir_fd(self, parts: tuple[bytes, ...]) -> int:
        """This thread's descriptor for a directory of the target (a few kept open),
        opened from its nearest open ancestor's, one name at a time, never following
        a symlink."""
        if not parts:
            return self._root_fd
        cache = self._dir_fds
        fd = cache.lookup(parts)
        if fd is not None:
            return fd
        known = len(parts) - 1  # how deep the nearest open ancestor is
        while known > 0 and (fd := cache.lookup(parts[:known])) is None:
            known -= 1
        if fd is None:
            fd = self._root_fd
        for depth in range(known + 1, len(parts) + 1):
            fd = os.open(parts[depth - 1], DIR_FLAGS, dir_fd=fd)
            cache.put(parts[:depth], fd)
        return fd

    def _close_dir_fds(self) -> None:
        self._dir_fds.close()

    def _link(
        self, root_fd: int, parts: tuple[bytes, ...], node: Node, first: tuple[bytes, ...]
    ) -> None:
        try:
            src_fd = open_dir_chain(root_fd, first[:-1])
            try:
                dst_fd = open_dir_chain(root_fd, parts[:-1])
                try:
                    self._remove_existing(dst_fd, parts[-1])
                    os.link(
                        first[-1],
                        parts[-1],
                        src_dir_fd=src_fd,
                        dst_dir_fd=dst_fd,
                        follow_symlinks=False,
                    )
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
        except FileNotFoundError:
            # The first link was not restored (damaged data): try this name on its own.
            self._hardlinks.pop((node.device, node.inode), None)
            self._restore_alone(parts, node)
            return
        except OSError as e:
            self._warn(parts, f"cannot create hard link: {e.strerror}")
            return
        with self._lock:
            self._result.files += 1

    def _restore_alone(self, parts: tuple[bytes, ...], node: Node) -> None:
        with ThreadPoolExecutor(1) as pool:
            self._pool = pool
            try:
                self._plan_file(parts, node)
                self._submit_job()
                self._wait_jobs(0)
            finally:
                self._close_dir_fds()

    # --- metadata -------------------------------------------------------------------

    def _set_metadata(
        self,
        parts: tuple[bytes, ...],
        node: Node,
        *,
        fd: int | None = None,
        dir_fd: int | None = None,
        name: bytes | None = None,
        created: bool = False,
    ) -> None:
        """Owner, xattrs, mode and times, through ``fd`` or ``name`` in ``dir_fd``.

        Each step is tried on its own: a refused xattr must not cost the mode and times.
        Hostile values (a negative uid, an absurd mode) give warnings, never a crash.
        ``created``: an entry this restore just created in a directory without setgid,
        so it is ours, in our group; a file (``fd``) was created with its permission
        bits, less the umask (a FIFO or device node was not: it gets its mode here).
        """
        assert fd is not None or name is not None
        if self._owner and not (created and (node.uid, node.gid) == self._ids):
            try:
                if fd is not None:
                    os.fchown(fd, node.uid, node.gid)
                else:
                    os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]
            except (OSError, OverflowError, ValueError, TypeError) as e:
                self._metadata_warning(parts, "owner", e)
        if fd is not None:
            for key, value in node.xattrs:
                try:
                    os.setxattr(fd, key, value)
                except (OSError, OverflowError, ValueError, TypeError) as e:
                    self._metadata_warning(parts, f"xattr {key!r}", e)
        # Linux has no mode for symlinks. A file created with its mode needs no chmod
        # unless the umask took bits away, or it has setuid/setgid/sticky bits (which a
        # chown clears, and open never sets).
        if node.type != SYMLINK and not (
            created and fd is not None and node.mode == node.mode & 0o777 & ~self._umask
        ):
            try:
                if fd is not None:
                    os.fchmod(fd, node.mode)
                else:
                    os.chmod(name, node.mode, dir_fd=dir_fd)  # type: ignore[arg-type]
            except (OSError, OverflowError, ValueError, TypeError) as e:
                self._metadata_warning(parts, "mode", e)
        ns = (node.atime_ns or node.mtime_ns, node.mtime_ns)
        try:
            if fd is not None:
                os.utime(fd, ns=ns)
            else:
                os.utime(name, ns=ns, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]
        except (OSError, OverflowError, ValueError, TypeError) as e:
            self._metadata_warning(parts, "times", e)

    def _metadata_warning(self, parts: tuple[bytes, ...], what: str, e: Exception) -> None:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        self._warn(parts, f"cannot restore {what}: {reason}")

    def _set_dir_metadata(self, parts: tuple[bytes, ...], node: Node) -> None:
        try:
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=self._dir_fd(parts[:-1]))
        except OSError as e:
            self._warn(parts, f"cannot set metadata: {e.strerror}")
            return
        try:
            self._set_metadata(parts, node, fd=fd)
        finally:
            os.close(fd)

    # --- verification ---------------------------------------------------------------

    def _verify(self) -> None:
        for parts, node in self._files:
            try:
                fd = os.open(
                    parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._dir_fd(parts[:-1])
                )
            except OSError as e:
                self._error(parts, f"verify: cannot open: {e.strerror}")
                continue
            try:
                if not self._content_matches(fd, node):
                    self._error(parts, "verify: restored content differs from the snapshot")
                    continue
            finally:
                os.close(fd)
            self._result.verified += 1

    def _content_matches(self, fd: int, node: Node) -> bool:
        pos = 0
        for item in node.content:
            if isinstance(item, int):
                if not _reads_as_zeros(fd, pos, item):
                    return False
                pos += item
                continue
            size = self.source.blob_size(item)
            if size is None:
                return False
            data = os.pread(fd, size, pos)
            if blob_id(self.source.id_key, data) != item:
                return False
            pos += len(data)
        return os.fstat(fd).st_size == pos


def _jobs(files: list[_File]) -> Iterator[list[_File]]:
    """Files in runs for one worker each: neighbours, whose blobs sit together."""
    job: list[_File] = []
    size = 0
    for file in files:
        job.append(file)
        size += file.size
        if len(job) >= JOB_FILES or size >= JOB_BYTES:
            yield job
            job, size = [], 0
    if job:
        yield job


def _file_job(file: _File) -> list[Any]:
    """A planned file as a worker process gets it."""
    return [
        list(file.parts),
        msgspec.msgpack.encode(file.node),
        file.size,
        [
            [pack, e.type, e.id, e.offset, e.length, e.raw_length, e.flags, at]
            for pack, e, at in file.blobs
        ],
    ]


def _has_data(node: Node) -> bool:
    return any(not isinstance(item, int) for item in node.content)


def _reads_as_zeros(fd: int, pos: int, length: int) -> bool:
    """Whether ``length`` bytes from ``pos`` read as zeros; holes are skipped unread."""
    end = pos + length
    while pos < end:
        try:
            data_at = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return True  # no data after pos: the rest is a hole (or past the end)
        if data_at >= end:
            return True
        pos = data_at
        step = min(end - pos, 1 << 20)
        if os.pread(fd, step, pos).count(0) != step:
            return False
        pos += step
    return True


def _current_umask() -> int:
    """The process's umask, read without changing it (other threads create files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: assume the worst, so modes are always set explicitly


def _unlink_quietly(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
