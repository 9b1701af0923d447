"""Streamed sources: a command's standard output stored as one file of a snapshot.

A stream (a database dump, say) is read straight from the command's pipe into the
chunker, never through a temporary file, and stored as ``/stdin/NAME``. A command that
exits non-zero or outlives its timeout fails the backup and no snapshot is written: a
snapshot holding a truncated dump would look good and restore garbage.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Protocol, cast

from strongroom.engine.fsmeta import group_name, user_name
from strongroom.errors import StrongroomError, UsageError
from strongroom.process import kill_group
from strongroom.repository.chunker import Readable
from strongroom.repository.tree import DIR, FILE, Node

# Where streams live in a snapshot: `--stdin-name sql/app.dump` is /stdin/sql/app.dump,
# restored as TARGET/stdin/sql/app.dump.
STREAM_ROOT = b"/stdin"
STREAM_FILE_MODE = 0o600
STREAM_DIR_MODE = 0o700
STDERR_LINES_KEPT = 20
STDERR_LINES_SHOWN = 5
STDERR_LINE_CHARS = 300


class StreamFailed(StrongroomError):
    """A stream's command failed (non-zero exit, a signal, its timeout): no snapshot."""

    hint = "no snapshot was written; fix the command, then run the backup again"


class StreamSource(Protocol):
    """What the archiver reads a stream from."""

    @property
    def name(self) -> str:
        """The stream's place below STREAM_ROOT: a relative path."""

    def open(self) -> AbstractContextManager[Readable]:
        """The stream's bytes. Leaving the context after reading to the end checks that
        the producer succeeded, and raises StreamFailed if it did not."""

    def stop(self) -> None:
        """The backup failed elsewhere: stop producing (the reader then sees the end)."""


def stream_parts(name: str) -> list[bytes]:
    """The components of a stream name; a UsageError unless it is a safe relative path."""
    parts = name.split("/")
    if name.startswith("/") or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise UsageError(
            f"stream name {name!r}: give a relative path without '.' or '..' parts,"
            " such as sql/app.dump"
        )
    return [os.fsencode(p) for p in parts]


def stream_path(name: str) -> bytes:
    """Where the stream ``name`` is stored in a snapshot."""
    return STREAM_ROOT + b"/" + b"/".join(stream_parts(name))


def check_stream_names(names: Sequence[str], roots: Sequence[bytes] = ()) -> None:
    """A UsageError when two streams, or a stream and a backed-up path, would share a
    place in the snapshot."""
    files: dict[bytes, str] = {}
    for name in names:
        path = stream_path(name)
        if path in files:
            raise UsageError(f"two streams are named {name!r}")
        files[path] = name
    for path, name in files.items():
        parts = path.split(b"/")
        for depth in range(3, len(parts)):
            parent = b"/".join(parts[:depth])
            if parent in files:
                raise UsageError(f"streams {files[parent]!r} and {name!r} would share a place")
    for root in roots:
        if root == STREAM_ROOT or root.startswith(STREAM_ROOT + b"/"):
            raise UsageError(
                f"{os.fsdecode(root)} is where streams are stored; it cannot also be a source"
            )


def _owner() -> tuple[int, int, str, str]:
    uid, gid = os.getuid(), os.getgid()
    return uid, gid, user_name(uid), group_name(gid)


def stream_file_node(name: bytes, size: int, content: list[bytes | int], now_ns: int) -> Node:
    """A stream as a regular file: mode 0600, owned by the user who ran it, mtime now."""
    uid, gid, user, group = _owner()
    return Node(
        name=name, type=FILE, mode=STREAM_FILE_MODE, uid=uid, gid=gid, user=user,
        group=group, mtime_ns=now_ns, ctime_ns=now_ns, size=size, content=content,
    )  # fmt: skip


def stream_dir_node(name: bytes, now_ns: int) -> Node:
    """A directory that exists only in the snapshot, holding streams."""
    uid, gid, user, group = _owner()
    return Node(
        name=name, type=DIR, mode=STREAM_DIR_MODE, uid=uid, gid=gid, user=user,
        group=group, mtime_ns=now_ns, ctime_ns=now_ns, links=2,
    )  # fmt: skip


def graft(
    root: bytes,
    files: Sequence[tuple[str, Node]],
    load: Callable[[bytes], list[Node]],
    save: Callable[[list[Node]], bytes],
    now_ns: int,
) -> bytes:
    """A new root tree: ``root`` with each (stream name, file node) added below
    STREAM_ROOT; trees on the way are loaded, extended and saved again."""
    leaves = [(stream_path(name).split(b"/")[1:], node) for name, node in files]
    return _graft_level(root, leaves, load, save, now_ns, b"")


def _graft_level(
    tree_id: bytes | None,
    leaves: list[tuple[list[bytes], Node]],
    load: Callable[[bytes], list[Node]],
    save: Callable[[list[Node]], bytes],
    now_ns: int,
    where: bytes,
) -> bytes:
    nodes = {n.name: n for n in load(tree_id)} if tree_id is not None else {}
    deeper: dict[bytes, list[tuple[list[bytes], Node]]] = {}
    for parts, node in leaves:
        head, rest = parts[0], parts[1:]
        if rest:
            deeper.setdefault(head, []).append((rest, node))
        elif head in nodes:
            raise UsageError(f"{os.fsdecode(where + b'/' + head)}: a stream's place is taken")
        else:
            nodes[head] = node
    for head, sub in deeper.items():
        existing = nodes.get(head)
        if existing is not None and existing.type != DIR:
            raise UsageError(f"{os.fsdecode(where + b'/' + head)}: a stream's place is taken")
        directory = existing or stream_dir_node(head, now_ns)
        directory.subtree = _graft_level(
            existing.subtree if existing else None, sub, load, save, now_ns, where + b"/" + head
        )
        nodes[head] = directory
    return save(list(nodes.values()))


class CommandStream:
    """A stream read from a command's stdout: run without a shell, stdin from
    /dev/null, stderr kept (its last lines name the failure), in its own process group
    so a timeout stops the command and anything it started."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        stream_parts(name)
        if not command:
            raise UsageError(f"stream {name!r}: the command is empty")
        self._name = name
        self.command = list(command)
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def what(self) -> str:
        return f"stream {self._name} (command: {shlex.join(self.command)})"

    def open(self) -> AbstractContextManager[Readable]:
        return self._run()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._proc is not None:
                kill_group(self._proc)

    @contextmanager
    def _run(self) -> Iterator[Readable]:
        with self._lock:
            if self._stopped:
                raise StreamFailed(f"{self.what}: stopped before it started")
            try:
                proc = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, bufsize=0, env=self.env, start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                raise StreamFailed(f"{self.what}: cannot run it: {e.strerror or e}") from None
            self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        tail: deque[bytes] = deque(maxlen=STDERR_LINES_KEPT)
        drain = threading.Thread(target=_keep_tail, args=(proc.stderr, tail), daemon=True)
        drain.start()
        expired = threading.Event()

        def on_timeout() -> None:
            expired.set()
            kill_group(proc)

        timer = threading.Timer(self.timeout_s, on_timeout) if self.timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            yield cast(Readable, proc.stdout)  # unbuffered (bufsize=0): a raw FileIO
        except BaseException:
            kill_group(proc)
            raise
        finally:
            # The timer still bounds this wait: a command that closed its stdout but
            # keeps running is killed at its deadline.
            returncode = proc.wait()
            if timer is not None:
                timer.cancel()
            proc.stdout.close()
            drain.join(timeout=5)
            with self._lock:
                self._proc = None
        if expired.is_set():
            raise StreamFailed(
                f"{self.what} was killed after its {self.timeout_s:g}s timeout" + _stderr_text(tail)
            )
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with code {returncode}"
            )
            raise StreamFailed(f"{self.what} {how}{_stderr_text(tail)}")


def _keep_tail(stream: IO[bytes], tail: deque[bytes]) -> None:
    try:
        for line in stream:
            tail.append(line[: STDERR_LINE_CHARS * 4])
    finally:
        stream.close()


def _stderr_text(tail: deque[bytes]) -> str:
    lines = [
        line.decode("utf-8", "replace").rstrip()[:STDERR_LINE_CHARS]
        for line in list(tail)[-STDERR_LINES_SHOWN:]
    ]
    lines = [line for line in lines if line]
    return f"; its last error output: {' | '.join(lines)}" if lines else "; it wrote no errors"
