"""The directory scanner in a process of its own, and what forked children share.

Light on purpose: a backup forks its scanner as soon as it has parsed its arguments,
before it loads the cryptography and storage code (~0.15 s from a cold cache), so
the listing of a big tree starts that much earlier. Nothing here imports more than
the tree format.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import stat
import struct
import threading
from collections.abc import Sequence
from typing import IO

import msgspec

from strongroom.engine.scan import Listing, Scanner, TreeScanner
from strongroom.errors import StrongroomError, UsageError

_LENGTH = struct.Struct("<I")
PIPE_SIZE = 1 << 20  # a scanner process's look-ahead
_encoder = msgspec.msgpack.Encoder()
_listing_decoder = msgspec.msgpack.Decoder(tuple[bytes, Listing])
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
SCANNER_NAME = b"strongroom-scan"  # what ps shows (15 bytes at most)


def start_scan(
    paths: Sequence[str], excludes: Sequence[str], *, streams: bool = False, process: bool = True
) -> Scanner:
    """Start listing the directories below ``paths`` (before the repository is even
    open, if the caller likes); hand it to the Archiver, and close it after.
    ``process``: in a process of its own, where this one can still fork."""
    roots = normalize_paths(paths, streams=streams)
    ordered = in_walk_order(directory_roots(roots))
    patterns = [os.fsencode(p) for p in excludes]
    if process:
        return start_scan_process(ordered, patterns)
    return TreeScanner(ordered, patterns)


def normalize_paths(paths: Sequence[str], *, streams: bool = False) -> list[bytes]:
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


def directory_roots(roots: list[bytes]) -> list[bytes]:
    """The roots the walk lists (directories; a file or link is backed up on its own)."""
    result = []
    for root in roots:
        try:
            if stat.S_ISDIR(os.lstat(root).st_mode):
                result.append(root)
        except OSError:
            pass  # reported by the walk
    return result


def in_walk_order(roots: list[bytes]) -> list[bytes]:
    """Roots in the order the walk reaches them: name by name down the path."""
    return sorted(roots, key=lambda root: root.split(b"/"))


class ScanProcess:
    """A Scanner in a process of its own: it lists the tree in the walk's order and
    streams the listings through a pipe (whose buffer is the look-ahead), so the walk
    spends its interpreter's time on files, not on listing them."""

    def __init__(self, roots: Sequence[bytes], excludes: Sequence[bytes]) -> None:
        """Fork the scanner now: call it only while this process has one thread."""
        self.roots = list(roots)
        self.excludes = list(excludes)
        read_end, write_end = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
            try:
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the system's default buffer: less look-ahead
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                os.close(read_end)
                become_child(SCANNER_NAME)
                with os.fdopen(write_end, "wb") as out:
                    _stream_listings(out, self.roots, self.excludes)
            except BaseException:
                code = 1  # the parent sees the end of the stream and says so
            finally:
                os._exit(code)
        os.close(write_end)
        self._reader = os.fdopen(read_end, "rb", buffering=PIPE_SIZE)

    def listing(self, path: bytes) -> Listing:
        head = self._reader.read(_LENGTH.size)
        frame = self._reader.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else b""
        if not frame:
            raise StrongroomError("the directory scanner process ended unexpectedly")
        listed, listing = _listing_decoder.decode(frame)
        if listed != path:
            raise AssertionError(f"scanner out of step: listed {listed!r}, walk at {path!r}")
        return listing

    def close(self) -> None:
        self._reader.close()  # a scanner still writing gets EPIPE and ends
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _stream_listings(out: IO[bytes], roots: list[bytes], excludes: list[bytes]) -> None:
    """Every directory's listing, depth first in listing order (the walk's order)."""
    # The pipe bounds how far the listings written run ahead of the walk. The threads
    # list up to MAX_AHEAD directories beyond the one written next: while one thread
    # lists a big directory the other goes on below it. With 64 an unchanged
    # re-backup waited for the scan longer (eight alternations: 1.58 s against 1.68 s
    # on average; docs/performance.md, "A ninth host").
    with TreeScanner(roots, excludes) as scanner:

        def visit(path: bytes) -> None:
            listing = scanner.listing(path)
            data = _encoder.encode((path, listing))
            out.write(_LENGTH.pack(len(data)) + data)
            for sub in listing.subdirectories(path):
                visit(sub)

        for root in roots:
            visit(root)
        out.flush()


def start_scan_process(roots: Sequence[bytes], excludes: Sequence[bytes]) -> Scanner:
    """A scanner in a process of its own where this process can still fork (one
    thread), else threads here."""
    if hasattr(os, "fork") and thread_count() == 1:
        return ScanProcess(roots, excludes)
    return TreeScanner(roots, excludes)


def thread_count() -> int:
    """This process's threads, as the kernel counts them (C threads too)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# --- the child's side -----------------------------------------------------------------


def become_child(name: bytes) -> None:
    """A forked child's set-up: it dies with its parent, is named ``name`` in ps and
    /proc/PID/comm, and leaves interrupts to the parent (which ends it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]))
    except (OSError, AttributeError):
        pass  # not Linux: the child still ends when its pipe closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
