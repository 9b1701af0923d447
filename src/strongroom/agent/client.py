"""The agent's side (`strongroom agent`, on the client): walk, chunk, compress, send.

It answers one director over stdin/stdout: ``hello``, then one request: ``backup``,
``restore``, ``stat`` (a fresh-file prerequisite) or ``run`` (a prerequisite command
or hook with ``on = "client"``). For a backup it runs the same archiver as a local
backup, with a sink that asks the director which chunks it lacks and sends only those,
compressed; the job's client-side streams (the commands the director names, a
database dump say) are read by that archiver too. It never sees the encryption key or
any storage credential, and has no way to delete or overwrite anything.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from strongroom.agent.protocol import (
    MAX_IDS,
    MINOR,
    MINOR_BATCHES,
    RESTORE_BATCH,
    STORE_BATCH,
    STORE_BATCH_BYTES,
    VERSION,
    Channel,
    ProtocolError,
    announced_minor,
    field,
    read_frame,
    remote_error,
    write_frame,
)
from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.restorer import Restorer, RestoreRequest
from strongroom.engine.sink import Stored
from strongroom.engine.streams import CommandStream
from strongroom.errors import StrongroomError
from strongroom.process import run_command
from strongroom.repository import Chunker, ChunkerParams, Node, Snapshot, compression
from strongroom.repository.crypto import BLOB_OVERHEAD
from strongroom.repository.snapshot import encode_snapshot
from strongroom.repository.tree import decode_tree


class DirectorSink:
    """A BlobSink whose repository is on the director, reached by request and reply.
    Each request is a round trip: from a director that takes them (protocol 1.3), the
    chunks of up to 256 unchanged files (from any directories) and of a group of new
    chunks are asked about in one request each, not one by one, and new blobs go
    several to a request."""

    remote = True

    def __init__(
        self, reader: BinaryIO, writer: BinaryIO, setup: dict[str, Any], director_minor: int = 0
    ) -> None:
        self._call = Channel(reader, writer).call
        self._batches = director_minor >= MINOR_BATCHES
        self._store_lock = threading.Lock()
        self._stores: list[dict[str, Any]] = []  # blobs for the next store_many
        self._stores_size = 0
        self.id_key: bytes = field(setup, "id_key", bytes)
        chunker = field(setup, "chunker", list)
        self._params = ChunkerParams(int(chunker[0]), int(chunker[1]), int(chunker[2]))
        self._seed = int(chunker[3])
        self._level = int(field(setup, "compression", int))

    def new_chunker(self) -> Chunker:
        return Chunker(self._params, self._seed)

    def known(self, bid: bytes) -> bool:
        return bool(self._call({"op": "known", "id": bid})["value"])

    def claim(self, bid: bytes) -> bool:
        return bool(self._call({"op": "claim", "id": bid})["value"])

    def claim_many(
        self, bids: list[bytes], data: Sequence[bytes | memoryview] | None = None
    ) -> list[bool]:
        if not self._batches:
            return [self.claim(bid) for bid in bids]
        return self._ask_many("claim_many", bids)

    def known_contents(self, contents: Sequence[list[bytes | int]]) -> list[bool]:
        chunks = (c for content in contents for c in content if isinstance(c, bytes))
        ids = list(dict.fromkeys(chunks))  # each asked about once
        if self._batches:
            known = dict(zip(ids, self._ask_many("known_many", ids), strict=True))
        else:
            known = {bid: self.known(bid) for bid in ids}
        return [all(isinstance(c, int) or known[c] for c in content) for content in contents]

    def _ask_many(self, op: str, ids: list[bytes]) -> list[bool]:
        """One ``known_many`` or ``claim_many`` request per MAX_IDS ids."""
        answers: list[bool] = []
        for at in range(0, len(ids), MAX_IDS):
            part = ids[at : at + MAX_IDS]
            values = field(self._call({"op": op, "ids": part}), "values", list)
            if len(values) != len(part):
                raise ProtocolError(f"{op}: {len(values)} answers for {len(part)} ids")
            answers += [bool(v) for v in values]
        return answers

    def store(
        self, blob_type: int, bid: bytes, data: bytes | memoryview, compressed: bytes | None = None
    ) -> Stored:
        packed = compression.compress(data, self._level) if len(data) > 64 else None
        payload = packed if packed is not None else bytes(data)
        blob: dict[str, Any] = {
            "type": blob_type, "id": bid, "raw": len(data), "compressed": packed is not None,
            "data": payload,
        }  # fmt: skip
        if not self._batches:
            return Stored(len(data), int(self._call({"op": "store", **blob})["stored"]))
        # Sent with others (store_many); the director stores the payload as it is, so
        # what it takes is known here.
        with self._store_lock:
            self._stores.append(blob)
            self._stores_size += len(payload)
            if len(self._stores) >= STORE_BATCH or self._stores_size >= STORE_BATCH_BYTES:
                self._flush_stores()
        return Stored(len(data), len(payload) + BLOB_OVERHEAD)

    def _flush_stores(self) -> None:
        """Send the waiting blobs in one store_many (the caller holds _store_lock)."""
        blobs, self._stores, self._stores_size = self._stores, [], 0
        if blobs:
            self._call({"op": "store_many", "blobs": blobs})

    def finish(self) -> None:
        with self._store_lock:
            self._flush_stores()
        self._call({"op": "finish"})

    def discard(self) -> None:
        with self._store_lock:
            self._stores, self._stores_size = [], 0
        try:
            self._call({"op": "discard"})
        except StrongroomError:
            pass  # the session is failing anyway

    def commit(self, snapshot: Snapshot) -> str:
        return str(self._call({"op": "commit", "snapshot": encode_snapshot(snapshot)})["id"])


def serve(reader: BinaryIO, writer: BinaryIO) -> int:
    """Run one agent session; the exit code tells the director how it ended."""
    hello = read_frame(reader, frozenset({"hello"}))
    if hello.get("version") != VERSION:
        write_frame(writer, {"op": "hello", "version": VERSION, "minor": MINOR, "ok": False})
        return 2
    write_frame(writer, {"op": "hello", "version": VERSION, "minor": MINOR, "ok": True})
    request = read_frame(reader, frozenset({"backup", "restore", "stat", "run"}))
    director_minor = announced_minor(hello)
    if request["op"] == "restore":
        return _restore(reader, writer, director_minor, request)
    if request["op"] == "stat":
        return _stat(writer, request)
    if request["op"] == "run":
        return _run(writer, request)
    sink = DirectorSink(reader, writer, request, director_minor)
    paths = [str(p) for p in field(request, "paths", list)]
    try:
        streams = _streams(request)
        result = Archiver(
            None, SystemClock(), FilesCache(_cache_path(request.get("cache_key"))), sink=sink
        ).backup(
            BackupRequest(
                paths=paths,
                client=str(field(request, "client", str)),
                job=str(field(request, "job", str)),
                tags=[str(t) for t in request.get("tags", [])],
                excludes=[str(e) for e in request.get("excludes", [])],
                hostname=str(request.get("hostname", "")),
                username=str(request.get("username", "")),
                program_version=str(request.get("program_version", "")),
                streams=streams,
            )
        )
    except StrongroomError as e:
        write_frame(writer, {"op": "failed", "message": str(e), "exit_code": e.exit_code})
        return e.exit_code
    write_frame(writer, {
        "op": "done", "snapshot_id": result.snapshot.id,
        "warnings": [f"{w.path}: {w.message}" for w in result.warnings] + result.notes,
    })  # fmt: skip
    return 0


def _stat(writer: BinaryIO, request: dict[str, Any]) -> int:
    """The size and mtime of one path, links followed (minor version 2)."""
    path = field(request, "path", str)
    try:
        st = os.stat(path)
    except OSError as e:
        write_frame(writer, {"op": "stat", "error": e.strerror or type(e).__name__})
        return 0
    write_frame(writer, {"op": "stat", "mtime_ns": st.st_mtime_ns, "size": st.st_size,
                         "regular": stat.S_ISREG(st.st_mode)})  # fmt: skip
    return 0


def _run(writer: BinaryIO, request: dict[str, Any]) -> int:
    """Run one command the director names (no shell, stdin from /dev/null, killed with
    everything it started at its timeout) and say how it ended (minor version 2)."""
    command = field(request, "command", list)
    timeout = request.get("timeout")
    env = request.get("env", {})
    if (
        not command
        or not all(isinstance(word, str) for word in command)
        or not (isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0)
        or not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ProtocolError("message 'run': malformed command")
    timed_out, exit_code, output = False, -1, ""
    try:
        proc = run_command(command, timeout=float(timeout), env={**os.environ, **env})
        exit_code = proc.returncode
        output = _tail(proc.stderr) or _tail(proc.stdout)
    except subprocess.TimeoutExpired:
        timed_out = True
    except OSError as e:
        exit_code, output = 127, f"cannot run {command[0]}: {e.strerror or e}"
    write_frame(writer, {"op": "ran", "exit_code": exit_code, "timed_out": timed_out,
                         "output": output})  # fmt: skip
    return 0


def _tail(data: bytes, lines: int = 5, chars: int = 1000) -> str:
    kept = data.decode("utf-8", "replace").strip().splitlines()[-lines:]
    return "\n".join(kept)[-chars:]


def _streams(request: dict[str, Any]) -> list[CommandStream]:
    """The streams a ``backup`` request names: each command is run here, without a
    shell, and its output stored as a file (minor version 1)."""
    items = request.get("streams", [])
    if not isinstance(items, list):
        raise ProtocolError("message 'backup': bad field 'streams'")
    streams = []
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError("message 'backup': a stream is not a map")
        command = field(item, "command", list)
        timeout = item.get("timeout")
        if not all(isinstance(word, str) for word in command) or not (
            timeout is None or (isinstance(timeout, int | float) and timeout > 0)
        ):
            raise ProtocolError("message 'backup': malformed stream")
        streams.append(CommandStream(field(item, "name", str), command, timeout))
    return streams


class DirectorSource:
    """A BlobSource whose repository is on the director: it sends decrypted trees and
    data, only those of the snapshot being restored. From a director that takes them
    (protocol 1.3), the blobs a thread ``want``s come several to a request."""

    def __init__(
        self, reader: BinaryIO, writer: BinaryIO, id_key: bytes, director_minor: int = 0
    ) -> None:
        self._call = Channel(reader, writer).call
        self.id_key = id_key
        self._batches = director_minor >= MINOR_BATCHES
        self._local = threading.local()  # each thread's wanted ids and fetched blobs

    def tree(self, tree_id: bytes) -> list[Node]:
        data = field(self._call({"op": "tree", "id": tree_id}), "data", bytes)
        return decode_tree(data, f"tree {tree_id.hex()[:16]}").nodes

    def want(self, bids: list[bytes]) -> None:
        local = self._local
        ids = bids if self._batches else []  # an older director: one blob at a time
        local.wanted = deque(dict.fromkeys(ids))  # each fetched once, in this order
        local.uses = Counter(ids)  # a fetched blob is kept until its last use
        local.fetched = {}

    def blob(self, bid: bytes) -> bytes:
        local = self._local
        if not hasattr(local, "uses"):
            self.want([])  # nothing said: each blob is asked for alone
        uses: Counter[bytes] = local.uses
        fetched: dict[bytes, bytes | StrongroomError] = local.fetched
        if uses[bid] > 0 and bid not in fetched:
            wanted: deque[bytes] = local.wanted
            while wanted[0] != bid:  # wanted by a file given up on: not asked for now
                del uses[wanted.popleft()]
            self._fetch(wanted, fetched)
        got = fetched.get(bid)
        if got is None:  # not wanted (or no longer): asked for alone
            data: bytes = field(self._call({"op": "blob", "id": bid}), "data", bytes)
            return data
        uses[bid] -= 1
        if uses[bid] <= 0:
            del fetched[bid], uses[bid]
        if isinstance(got, StrongroomError):
            raise got
        return got

    def _fetch(self, wanted: deque[bytes], fetched: dict[bytes, bytes | StrongroomError]) -> None:
        """One ``blobs`` request for the next wanted ids; the director answers as many
        as fit in its reply (at least one), and the rest stay wanted."""
        ids = [wanted[i] for i in range(min(len(wanted), RESTORE_BATCH))]
        items = field(self._call({"op": "blobs", "ids": ids}), "data", list)
        if not 1 <= len(items) <= len(ids):
            raise ProtocolError(f"blobs: {len(items)} answers for {len(ids)} ids")
        for bid, item in zip(ids, items, strict=False):
            wanted.popleft()
            if isinstance(item, bytes):
                fetched[bid] = item
            elif isinstance(item, dict):  # that blob could not be read: why
                fetched[bid] = remote_error(item)
            else:
                raise ProtocolError("blobs: an answer is neither data nor an error")

    def blob_size(self, bid: bytes) -> int | None:
        value = self._call({"op": "size", "id": bid}).get("value")
        return value if isinstance(value, int) else None


def _restore(
    reader: BinaryIO, writer: BinaryIO, director_minor: int, request: dict[str, Any]
) -> int:
    source = DirectorSource(reader, writer, field(request, "id_key", bytes), director_minor)
    try:
        result = Restorer(None, source=source).restore_tree(
            field(request, "tree", bytes),
            RestoreRequest(
                target=str(field(request, "target", str)),
                includes=[str(p) for p in request.get("includes", [])],
                excludes=[str(p) for p in request.get("excludes", [])],
                verify=bool(request.get("verify", False)),
            ),
        )
    except StrongroomError as e:
        write_frame(writer, {"op": "failed", "message": str(e), "exit_code": e.exit_code})
        return e.exit_code
    write_frame(writer, {
        "op": "done", "files": result.files, "dirs": result.dirs, "other": result.other,
        "bytes": result.bytes, "verified": result.verified, "warnings": result.warnings,
        "errors": result.errors,
    })  # fmt: skip
    return 0


def _cache_path(key: object) -> Path | None:
    """The agent's own files cache, on the client, named by the director's key."""
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", key):
        return None
    base = os.environ.get("STRONGROOM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "strongroom"
    )
    return Path(base) / "agent" / f"files-{key}"


def main() -> int:
    """Entry point of `strongroom agent`: the protocol on stdin/stdout, logs on stderr."""
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except ProtocolError as e:
        print(f"strongroom agent: {e}", file=sys.stderr)
        return 2
