"""The restorer: a snapshot in, files under a target directory out.

Safety rules: every name is checked (no ``/``, ``..``, NUL or empty names); every
directory is opened with O_NOFOLLOW relative to its parent's descriptor, so nothing
is ever written outside the target through a symlink; files are written under a
temporary name and renamed into place only once all their data has been verified.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import secrets
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from strongroom.engine.walk import load_tree
from strongroom.errors import IntegrityError, StorageError, UsageError
from strongroom.repository import DATA, Node, Repository, Snapshot
from strongroom.repository.crypto import blob_id
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
MAX_FILES_IN_FLIGHT = 64
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


class RepositorySource:
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


class Restorer:
    def __init__(
        self,
        repo: Repository | None,
        progress: RestoreProgress | None = None,
        workers: int = 4,
        source: BlobSource | None = None,
    ) -> None:
        if source is None:
            if repo is None:
                raise TypeError("a Restorer needs a repository or a source")
            source = RepositorySource(repo)
        self.source = source
        self.progress = progress or _NoProgress()
        self.workers = workers
        self._lock = threading.Lock()
        self._result = RestoreResult()
        self._owner = os.geteuid() == 0
        # Each worker thread's open parent directory (thread id -> (parts, fd)).
        self._parents: dict[int, tuple[tuple[bytes, ...], int]] = {}

    def restore(self, snapshot: Snapshot, request: RestoreRequest) -> RestoreResult:
        return self.restore_tree(snapshot.tree, request)

    def restore_tree(self, tree_id: bytes, request: RestoreRequest) -> RestoreResult:
        if request.restore_owner is not None:
            self._owner = request.restore_owner
        self._includes = [os.fsencode(p) for p in request.includes]
        self._excludes = [os.fsencode(p) for p in request.excludes]
        try:
            os.makedirs(request.target, exist_ok=True)
            root_fd = os.open(request.target, DIR_FLAGS)
            self._root_fd = root_fd
        except OSError as e:
            raise UsageError(f"cannot use target {request.target}: {e.strerror}") from None
        self._hardlinks: dict[tuple[int, int], tuple[bytes, ...]] = {}
        self._deferred_links: list[tuple[tuple[bytes, ...], Node, tuple[bytes, ...]]] = []
        self._dirs: list[tuple[tuple[bytes, ...], Node]] = []
        self._files: list[tuple[tuple[bytes, ...], Node]] = []
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="strongroom-restore") as pool:
                self._pool = pool
                self._futures: deque[Future[None]] = deque()
                try:
                    self._restore_tree(root_fd, (), tree_id)
                    while self._futures:
                        self._futures.popleft().result()
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._close_thread_fds()
            for parts, node, first in self._deferred_links:
                self._link(root_fd, parts, node, first)
            # Directory times last, deepest first, so writing children cannot change them.
            for parts, node in sorted(self._dirs, key=lambda d: -len(d[0])):
                self._set_dir_metadata(root_fd, parts, node)
            if request.verify:
                self._verify(root_fd)
        finally:
            os.close(root_fd)
        return self._result

    # --- selection ------------------------------------------------------------------

    def _selected(self, path: bytes, is_dir: bool) -> bool | None:
        """True: restore; False: skip entirely; None: a directory to look inside."""
        for pattern in self._excludes:
            name = path.rsplit(b"/", 1)[-1]
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

    def _restore_tree(self, dir_fd: int, parts: tuple[bytes, ...], tree_id: bytes) -> bool:
        """Restore one directory's entries; True when anything was restored."""
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
            choice = self._selected(b"/" + b"/".join(child), node.type == DIR)
            if choice is False:
                continue
            if node.type == DIR:
                restored_any |= self._restore_dir(dir_fd, child, node, choice is True)
            elif choice:
                self._restore_entry(dir_fd, child, node)
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
            inner = self._restore_tree(child_fd, parts, node.subtree) if node.subtree else False
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

    def _restore_entry(self, dir_fd: int, parts: tuple[bytes, ...], node: Node) -> None:
        name = parts[-1]
        if node.type == FILE:
            if node.links > 1:
                key = (node.device, node.inode)
                first = self._hardlinks.get(key)
                if first is not None:
                    self._deferred_links.append((parts, node, first))
                    return
                self._hardlinks[key] = parts
            # Bound the files queued ahead of the workers, and so the memory they hold.
            while len(self._futures) >= MAX_FILES_IN_FLIGHT:
                self._futures.popleft().result()
            self._futures.append(self._pool.submit(self._restore_file, parts, node))
            return
        try:
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
        self._set_metadata(parts, node, dir_fd=dir_fd, name=name)
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

    # --- files ----------------------------------------------------------------------

    def _restore_file(self, parts: tuple[bytes, ...], node: Node) -> None:
        name = parts[-1]
        try:
            dir_fd = self._parent_fd(parts[:-1])
        except OSError as e:
            self._warn(parts, f"cannot open parent directory: {e.strerror}")
            return
        tmp = TEMP_PREFIX + secrets.token_hex(6).encode()
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                written = self._write_content(fd, node)
                self._set_metadata(parts, node, fd=fd)
            finally:
                os.close(fd)
            # rename() refuses to replace a directory (EISDIR) and replaces a symlink
            # itself, never what it points to.
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (IntegrityError, StorageError) as e:
            _unlink_quietly(dir_fd, tmp)
            self._error(parts, f"not restored: {e}")
            return
        except OSError as e:
            _unlink_quietly(dir_fd, tmp)
            self._warn(parts, f"cannot write: {e.strerror}")
            return
        with self._lock:
            self._result.files += 1
            self._result.bytes += written
            self._files.append((parts, node))
        self.progress.file_done(b"/" + b"/".join(parts), written)

    def _parent_fd(self, parts: tuple[bytes, ...]) -> int:
        """This thread's descriptor for a directory; files come in directory order."""
        me = threading.get_ident()
        cached = self._parents.get(me)
        if cached is not None:
            if cached[0] == parts:
                return cached[1]
            os.close(cached[1])
            del self._parents[me]
        fd = open_dir_chain(self._root_fd, parts)
        self._parents[me] = (parts, fd)
        return fd

    def _close_thread_fds(self) -> None:
        for _, fd in self._parents.values():
            os.close(fd)
        self._parents.clear()

    def _write_content(self, fd: int, node: Node) -> int:
        pos = 0
        written = 0
        for item in node.content:
            if isinstance(item, int):
                pos += item  # a hole: seek over it, so it stays a hole
                continue
            data = self.source.blob(item)
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, pos)
                view = view[n:]
                pos += n
            written += len(data)
        os.ftruncate(fd, pos)
        return written

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
            self._restore_file(parts, node)
            return
        except OSError as e:
            self._warn(parts, f"cannot create hard link: {e.strerror}")
            return
        with self._lock:
            self._result.files += 1

    # --- metadata -------------------------------------------------------------------

    def _set_metadata(
        self,
        parts: tuple[bytes, ...],
        node: Node,
        *,
        fd: int | None = None,
        dir_fd: int | None = None,
        name: bytes | None = None,
    ) -> None:
        """Owner, xattrs, mode and times, through ``fd`` or ``name`` in ``dir_fd``.

        Each step is tried on its own: a refused xattr must not cost the mode and times.
        Hostile values (a negative uid, an absurd mode) give warnings, never a crash.
        """
        assert fd is not None or name is not None

        def owner() -> None:
            if fd is not None:
                os.fchown(fd, node.uid, node.gid)
            else:
                os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]

        def mode() -> None:
            if fd is not None:
                os.fchmod(fd, node.mode)
            else:
                os.chmod(name, node.mode, dir_fd=dir_fd)  # type: ignore[arg-type]

        def times() -> None:
            ns = (node.atime_ns or node.mtime_ns, node.mtime_ns)
            if fd is not None:
                os.utime(fd, ns=ns)
            else:
                os.utime(name, ns=ns, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]

        def xattr(key: bytes, value: bytes) -> Callable[[], None]:
            assert fd is not None
            return lambda: os.setxattr(fd, key, value)

        steps: list[tuple[str, Callable[[], None]]] = []
        if self._owner:
            steps.append(("owner", owner))
        if fd is not None:
            steps += [(f"xattr {k!r}", xattr(k, v)) for k, v in node.xattrs]
        if node.type != SYMLINK:  # Linux has no mode for symlinks
            steps.append(("mode", mode))
        steps.append(("times", times))
        for what, step in steps:
            try:
                step()
            except (OSError, OverflowError, ValueError, TypeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                self._warn(parts, f"cannot restore {what}: {reason}")

    def _set_dir_metadata(self, root_fd: int, parts: tuple[bytes, ...], node: Node) -> None:
        try:
            fd = open_dir_chain(root_fd, parts)
        except OSError as e:
            self._warn(parts, f"cannot set metadata: {e.strerror}")
            return
        try:
            self._set_metadata(parts, node, fd=fd)
        finally:
            os.close(fd)

    # --- verification ---------------------------------------------------------------

    def _verify(self, root_fd: int) -> None:
        for parts, node in self._files:
            try:
                dir_fd = open_dir_chain(root_fd, parts[:-1])
                try:
                    fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
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


def _unlink_quietly(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
