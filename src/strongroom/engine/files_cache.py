"""The files cache: unchanged files (same size, mtime, ctime, inode) are not read again."""

from __future__ import annotations

import os
import threading
from pathlib import Path

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


class FilesCache:
    """Path -> what the file looked like and which blobs held it, last time."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._old: dict[bytes, msgspec.Raw] = {}
        self._new: dict[bytes, msgspec.Raw] = {}
        self._lock = threading.Lock()
        if path is not None:
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
        with self._lock:
            self._new[path] = msgspec.Raw(encoded)

    def keep(self, path: bytes) -> None:
        """Carry an unchanged file's entry over to the cache this run writes."""
        raw = self._old.get(path)
        if raw is not None:
            with self._lock:
                self._new[path] = raw

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
        raw = msgspec.Raw(_encoder.encode(entry))
        with self._lock:
            self._new[path] = raw

    def save(self) -> str | None:
        """Write the entries seen in this run, atomically; say why if that failed.

        The cache only saves work, so failing to write it (a full disk) is reported
        and otherwise harmless: the next backup reads the files again.
        """
        if self.path is None:
            return None
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(_encoder.encode(self._new))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return f"files cache {self.path} not saved: {e.strerror}"
        return None
