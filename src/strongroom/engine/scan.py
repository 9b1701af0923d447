"""Listing directories ahead of the walk that asks for them.

A few threads list and lstat a tree in the order a depth-first walk visits it, while
the walk (and, before it starts, the repository's key derivation and index load) goes
on, so cold metadata reads overlap each other and the CPU work. At most ``ahead``
listings wait to be taken; a directory the walk asks for before the threads reached it
is listed by the walk itself.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import threading
from collections.abc import Sequence
from typing import Protocol

import msgspec

from strongroom.engine.fsmeta import node_from_stat, open_noatime, read_xattrs
from strongroom.repository.tree import DIR, Node

SCAN_THREADS = 2
MAX_AHEAD = 512
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Listing(msgspec.Struct):
    """One directory as it was seen: a node per entry in name order (from its lstat;
    a stat result costs twice a node's memory, so none is kept), and problems to
    report (path, message)."""

    xattrs: list[tuple[bytes, bytes]] = []
    entries: list[Node] = []
    problems: list[tuple[bytes, str]] = []

    def subdirectories(self, path: bytes) -> list[bytes]:
        base = path.rstrip(b"/") + b"/"
        return [base + node.name for node in self.entries if node.type == DIR]


def is_excluded(path: bytes, name: bytes, patterns: Sequence[bytes]) -> bool:
    """Whether an exclude pattern matches: on the whole path when it has a ``/``,
    else on the name."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(path if b"/" in pattern else name, pattern):
            return True
    return False


def scan_directory(path: bytes, excludes: Sequence[bytes]) -> Listing:
    """List one directory: its entries that are not excluded, with their lstat."""
    listing = Listing()
    try:
        fd = open_noatime(path, DIR_FLAGS)
    except OSError as e:
        listing.problems.append((path, f"cannot open directory: {e.strerror}"))
        return listing
    try:
        listing.xattrs = read_xattrs(fd)
        names = sorted(map(os.fsencode, os.listdir(fd)))
        base = path.rstrip(b"/") + b"/"
        for name in names:
            if excludes and is_excluded(base + name, name, excludes):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    listing.problems.append((base + name, f"cannot stat: {e.strerror}"))
                continue
            node = node_from_stat(name, st)
            if stat.S_ISLNK(st.st_mode):
                try:
                    node.target = os.readlink(name, dir_fd=fd)
                except OSError as e:
                    listing.problems.append((base + name, f"cannot read link: {e.strerror}"))
                    continue
            listing.entries.append(node)
    except OSError as e:
        listing.problems.append((path, f"cannot read directory: {e.strerror}"))
    finally:
        os.close(fd)
    return listing


class Scanner(Protocol):
    """Listings of the directories below ``roots``, for a walk that asks for each."""

    roots: list[bytes]
    excludes: list[bytes]

    def listing(self, path: bytes) -> Listing: ...

    def close(self) -> None: ...


class TreeScanner:
    """Lists the directories below ``roots`` depth first, ahead of the walk."""

    def __init__(
        self,
        roots: Sequence[bytes],
        excludes: Sequence[bytes] = (),
        threads: int = SCAN_THREADS,
        ahead: int = MAX_AHEAD,
    ) -> None:
        self.roots = list(roots)
        self.excludes = list(excludes)
        self._ahead = ahead
        self._cond = threading.Condition()
        self._todo = list(reversed(self.roots))  # a stack: depth-first order
        self._ready: dict[bytes, Listing] = {}
        self._busy: set[bytes] = set()
        self._taken: set[bytes] = set()  # listed by the walk itself
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"strongroom-scan-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _next(self) -> bytes | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._todo and len(self._ready) + len(self._busy) < self._ahead:
                    path = self._todo.pop()
                    if path in self._taken:
                        self._taken.discard(path)
                        continue
                    self._busy.add(path)
                    return path
                self._cond.wait()

    def _run(self) -> None:
        while (path := self._next()) is not None:
            listing = scan_directory(path, self.excludes)
            with self._cond:
                self._busy.discard(path)
                if not self._closed:
                    self._ready[path] = listing
                    self._todo.extend(reversed(listing.subdirectories(path)))
                self._cond.notify_all()

    def listing(self, path: bytes) -> Listing:
        """The listing of ``path`` (a root or a directory in an earlier listing)."""
        with self._cond:
            while path not in self._ready and path in self._busy:
                self._cond.wait()
            listing = self._ready.pop(path, None)
            if listing is not None:
                self._cond.notify_all()
                return listing
            self._taken.add(path)
        listing = scan_directory(path, self.excludes)
        with self._cond:
            self._todo.extend(reversed(listing.subdirectories(path)))
            self._cond.notify_all()
        return listing

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> TreeScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
