"""A backend on a local (or mounted) filesystem with crash-safe, atomic writes."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from strongroom.backend.base import (
    BackendError,
    NoSpace,
    ObjectInfo,
    ObjectNotFound,
    PermanentError,
    TransientError,
    validate_name,
)
from strongroom.fdcache import ThreadFdCache

TEMP_PREFIX = ".tmp-"
FD_CACHE_PER_THREAD = 8


def translate_os_error(err: OSError, what: str) -> BackendError:
    """The backend error an OSError of a local file stands for (``what`` says doing what)."""
    if err.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        return ObjectNotFound(f"{what}: not found")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the repository's storage")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(f"{what}: {err.strerror}")
    return TransientError(f"{what}: {err.strerror or err}")


class LocalBackend:
    """Objects are files under ``root``; a write is temp file, fsync, rename, dir fsync."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._known_dirs: set[Path] = set()
        self._fds = ThreadFdCache(FD_CACHE_PER_THREAD)

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise translate_os_error(e, f"creating {self.root}") from e

    def _ensure_dir(self, directory: Path) -> None:
        if directory not in self._known_dirs:
            created = not directory.is_dir()
            directory.mkdir(parents=True, exist_ok=True)
            if created:
                _fsync_dir(directory.parent)
            self._known_dirs.add(directory)

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(name)
        try:
            self._ensure_dir(path.parent)
        except OSError as e:
            raise translate_os_error(e, f"saving {name}") from e
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
        staged = _LocalStaged(self, tmp, name)
        staged.write(data)
        staged.publish(name)

    def stage(self, prefix: str) -> _LocalStaged:
        """A temporary file in the repository's root, renamed into place on publish."""
        tmp = self.root / f"{TEMP_PREFIX}stage-{secrets.token_hex(8)}"
        return _LocalStaged(self, tmp, f"a new object under {prefix}")

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            if length is None:
                with open(path, "rb", buffering=0) as f:
                    if offset:
                        f.seek(offset)
                    return f.read()
            data = os.pread(self._range_fd(name, path), length, offset)
        except OSError as e:
            raise translate_os_error(e, f"loading {name}") from e
        if len(data) != length:
            raise ObjectNotFound(f"loading {name}: short read ({len(data)} of {length} bytes)")
        return data

    def load_into(self, name: str, offset: int, out: memoryview) -> None:
        """``load`` of ``len(out)`` bytes from ``offset``, read straight into ``out``."""
        path = self._path(name)
        try:
            got = os.preadv(self._range_fd(name, path), [out], offset)
        except OSError as e:
            raise translate_os_error(e, f"loading {name}") from e
        if got != len(out):
            raise ObjectNotFound(f"loading {name}: short read ({got} of {len(out)} bytes)")

    def open_direct(self, name: str) -> int | None:
        """A new descriptor of ``name`` for reads around the page cache (O_DIRECT; the
        caller closes it), or None where the file system refuses them."""
        direct = getattr(os, "O_DIRECT", 0)
        if not direct:
            return None
        try:
            return os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC | direct)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return None
            raise translate_os_error(e, f"loading {name}") from e

    def _range_fd(self, name: str, path: Path) -> int:
        """A descriptor for ranged reads, kept open per thread: restores read many
        blobs from the same pack. Objects are immutable, so a cached descriptor never
        sees other content; a removed object stays readable until it is closed."""
        return self._fds.get(name, lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(name))
        except OSError as e:
            raise translate_os_error(e, f"stat {name}") from e
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"stat {name}: not found (not an object)")
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose names start with ``prefix`` (a string prefix), sorted by name."""
        if not self.root.is_dir():
            raise ObjectNotFound(f"listing {prefix}: repository directory is missing")
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / directory if directory else self.root
        if not base.is_dir():
            return
        names: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
                rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                rel_dir = "" if rel_dir == "." else rel_dir + "/"
                # Descend only where names can still start with the prefix.
                dirnames[:] = [
                    d
                    for d in dirnames
                    if (rel_dir + d + "/").startswith(prefix)
                    or prefix.startswith(rel_dir + d + "/")
                ]
                names.extend(
                    rel_dir + fn
                    for fn in filenames
                    if not fn.startswith(TEMP_PREFIX) and (rel_dir + fn).startswith(prefix)
                )
        except OSError as e:
            raise translate_os_error(e, f"listing {prefix}") from e
        for name in sorted(names):
            try:
                st = os.stat(self.root / name)
            except FileNotFoundError:
                continue  # removed while listing
            except OSError as e:
                raise translate_os_error(e, f"listing {prefix}") from e
            yield ObjectInfo(name, st.st_size, st.st_mtime)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except OSError as e:
            raise translate_os_error(e, f"removing {name}") from e

    def close(self) -> None:
        self._fds.close()


class _LocalStaged:
    """Temp file, write, fsync, rename, directory fsync: whole under its name, or absent."""

    def __init__(self, backend: LocalBackend, tmp: Path, what: str) -> None:
        self._backend = backend
        self._tmp = tmp
        self._what = what
        self._failure: BackendError | None = None
        try:
            self._fd: int | None = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise translate_os_error(e, f"saving {what}") from e

    def _check_open(self) -> int:
        if self._fd is None:
            # A failed write discarded the object: keep failing the same way.
            raise self._failure or PermanentError("the temporary object was already closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._check_open()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            self._failure = translate_os_error(e, f"saving {self._what}")
            self.discard()
            raise self._failure from e

    def publish(self, name: str) -> None:
        self._check_open()
        assert self._fd is not None
        path = self._backend._path(name)
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._backend._ensure_dir(path.parent)
            os.rename(self._tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            self._failure = translate_os_error(e, f"saving {name}")
            self.discard()
            raise self._failure from e

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


def _raise(err: OSError) -> None:
    raise err


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
