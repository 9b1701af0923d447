"""The files cache: unchanged files (same size, mtime, ctime, inode) are not read again."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import BinaryIO

import msgspec

from strongroom.repository.tree import Node


class CachedFile(msgspec.Struct, array_like=True):
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    content: list[bytes | int]
    xattrs: list[tuple[bytes, bytes]] = []
    # False: seen, but modified too close to its read to be trusted (read next time,
    # and counted as changed rather than new).
    trusted: bool = True


# Entries stay encoded in memory (decoded when looked up): a decoded entry with its
# ints and lists costs about five times its encoding, and a fleet client has millions.
_file_decoder = msgspec.msgpack.Decoder(dict[bytes, msgspec.Raw])
_entry_decoder = msgspec.msgpack.Decoder(CachedFile)
_encoder = msgspec.msgpack.Encoder()
# The spool starts with a msgpack map32 header whose count is filled in at the end.
_MAP32 = struct.Struct(">BI")


class FilesCache:
    """Path -> what the file looked like and which blobs held it, last time.

    The entries of this run go straight to a temporary file next to the cache (one
    msgpack map, its count written last), not to memory: a first backup of a million
    files would otherwise hold a few hundred MB of them until the end. ``save`` makes
    that file the cache; ``discard`` (a failed backup) throws it away. Without a path
    (a worker process), they are kept in memory and handed over by ``take_new``.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._old: dict[bytes, msgspec.Raw] = {}
        self._new: dict[bytes, msgspec.Raw] = {}
        self._lock = threading.Lock()
        self._spool: BinaryIO | None = None
        self._spooled = 0
        self._problem: str | None = None  # why this run's cache cannot be written
        if path is not None:
            self._tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            try:
                self._old = _file_decoder.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError):
                self._old = {}  # a damaged cache only costs a re-read

    def lookup(self, path: bytes, node: Node) -> CachedFile | None:
        """The entry for an unchanged file (``node`` from its lstat), or None."""
        raw = self._old.get(path)
        if raw is None:
            return None
        try:
            entry = _entry_decoder.decode(raw)
        except msgspec.DecodeError:
            return None  # a damaged entry only costs a re-read
        if not entry.trusted or (entry.size, entry.mtime_ns, entry.ctime_ns, entry.inode) != (
            node.size,
            node.mtime_ns,
            node.ctime_ns,
            node.inode,
        ):
            return None
        return entry

    def known(self, path: bytes) -> bool:
        """Whether the last backup saw this path (then a cache miss means 'changed')."""
        return path in self._old

    def take_new(self) -> list[tuple[bytes, bytes]]:
        """The entries remembered so far, encoded, handed over (a worker's to its
        parent, who gives them to ``keep_encoded``)."""
        with self._lock:
            new, self._new = self._new, {}
        return [(path, bytes(raw)) for path, raw in new.items()]

    def keep_encoded(self, path: bytes, encoded: bytes) -> None:
        """Keep an entry a worker process encoded (a damaged one would only cost a
        re-read: ``lookup`` decodes each entry)."""
        self._add(path, msgspec.Raw(encoded))

    def keep(self, path: bytes) -> None:
        """Carry an unchanged file's entry over to the cache this run writes."""
        raw = self._old.get(path)
        if raw is not None:
            self._add(path, raw)

    def remember(
        self,
        path: bytes,
        st: os.stat_result,
        content: list[bytes | int],
        xattrs: list[tuple[bytes, bytes]],
        *,
        trusted: bool = True,
    ) -> None:
        # Changing an xattr changes ctime, so cached xattrs are as fresh as the content.
        entry = CachedFile(
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, content, xattrs, trusted
        )
        self._add(path, msgspec.Raw(_encoder.encode(entry)))

    def _add(self, path: bytes, raw: msgspec.Raw) -> None:
        with self._lock:
            if self.path is None:
                self._new[path] = raw
                return
            if self._problem is not None:
                return
            try:
                spool = self._spool or self._open_spool()
                spool.write(_encoder.encode(path))
                spool.write(memoryview(raw))
                self._spooled += 1
            except OSError as e:
                self._problem = f"files cache {self.path} not saved: {e.strerror}"
                self._close_spool()

    def save(self) -> str | None:
        """Make the entries seen in this run the cache, atomically; say why if that
        failed.

        The cache only saves work, so failing to write it (a full disk) is reported
        and otherwise harmless: the next backup reads the files again.
        """
        if self.path is None:
            return None
        with self._lock:
            try:
                if self._problem is None:
                    spool = self._spool or self._open_spool()  # nothing seen: empty
                    spool.seek(0)
                    spool.write(_MAP32.pack(0xDF, self._spooled))
                    spool.close()
                    self._spool = None
                    os.replace(self._tmp, self.path)
            except OSError as e:
                self._problem = f"files cache {self.path} not saved: {e.strerror}"
            if self._problem is not None:
                self._close_spool()
            return self._problem

    def _open_spool(self) -> BinaryIO:
        """Start this run's file (under the lock): a map header, its count to come."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_spools(self.path)
        self._spool = self._tmp.open("wb")
        self._spool.write(_MAP32.pack(0xDF, 0))
        return self._spool

    def discard(self) -> None:
        """Throw away what this run spooled (a backup that failed keeps the old cache)."""
        with self._lock:
            self._close_spool()

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            try:
                spool.close()
            except OSError:
                pass
        if self.path is not None:
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                pass  # never created (its directory could not be)


def _remove_stale_spools(path: Path) -> None:
    """Remove the spools of runs that were killed (their process is gone)."""
    prefix = path.name + ".tmp"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :]
        if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
