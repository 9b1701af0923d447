"""Worker processes: files read, chunked, compressed and encrypted by a second process,
so that another core works without waiting for the first one's interpreter lock.

Workers are forked when a command starts, before it starts any thread (a fork copies
only the calling thread, and a lock some other thread held would stay held in the
child), and wait on a pipe for work: first the keys and the repository's URL, then
batches of files. A worker asks its parent which blobs to store (deduplication is
decided in one place), writes its own packs and reports each one it published; the
parent indexes them and writes the snapshot. A worker dies with its parent
(PR_SET_PDEATHSIG) and leaves at most a temporary object, which listings ignore.
"""

from __future__ import annotations

import os
import struct
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import msgspec

from strongroom.backend import open_backend
from strongroom.clock import Clock
from strongroom.engine.scanproc import become_child, thread_count
from strongroom.engine.sink import Stored
from strongroom.errors import StrongroomError
from strongroom.repository import Chunker, Repository, Snapshot
from strongroom.repository.codec import decode_as
from strongroom.repository.crypto import MasterKey
from strongroom.repository.pack import PackEntry, PackWriter, compress_blob, pack_name
from strongroom.repository.repository import RepoConfig

_LENGTH = struct.Struct("<I")
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
WORKER_NAME = b"strongroom-work"  # what ps shows for the children (15 bytes at most)
# Pool threads that feed each worker process: one's request waits in the pipe while
# the worker answers the other's, so the worker does not idle between requests.
LANE_THREADS = 2


class WorkerFailed(StrongroomError):
    """A worker process reported an error (with its exit code and hint), or died."""

    def __init__(
        self,
        message: str,
        exit_code: int,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, details=details)
        self.exit_code = exit_code

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> WorkerFailed:
        details = message.get("details")
        return cls(
            str(message.get("message")),
            int(message.get("exit_code", 1)),
            hint=str(message.get("hint") or ""),
            details=details if isinstance(details, dict) else None,
        )


class Channel:
    """Length-prefixed msgpack messages over a pair of pipes."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self._reader, self._writer = reader, writer
        # Requests that came while a reply was awaited (see ``recv_reply``).
        self._held: deque[dict[str, Any]] = deque()

    def send(self, message: dict[str, Any]) -> None:
        data = _encoder.encode(message)
        # Two writes, not one of a concatenation: a batch's blobs are not copied again.
        self._writer.write(_LENGTH.pack(len(data)))
        self._writer.write(data)
        self._writer.flush()

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None at the end of the stream."""
        if self._held:
            return self._held.popleft()
        return self._read()

    def recv_reply(self, op: str) -> dict[str, Any] | None:
        """The next ``op`` message (None at the end of the stream). A worker awaiting
        the answer to its claim may first get the parent's next request (requests are
        pipelined): that is held for ``recv``, in order."""
        while (message := self._read()) is not None and message.get("op") != op:
            self._held.append(message)
        return message

    def _read(self) -> dict[str, Any] | None:
        head = self._reader.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack(head)
        data = self._reader.read(length)
        if len(data) < length:
            return None
        message: dict[str, Any] = _decoder.decode(data)
        return message

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


class Worker:
    """The parent's end of one worker process.

    Requests can be pipelined: ``begin`` sends one and queues its turn, so a second
    request waits in the pipe while the worker answers the first (it never sits idle
    between them); ``turn`` then lets the sender read the replies to its own request
    once the earlier ones are answered (the worker answers in order), and passes the
    turn on when its block ends.
    """

    def __init__(self, pid: int, channel: Channel) -> None:
        self.pid = pid
        self.channel = channel
        self._fds = (channel._reader.fileno(), channel._writer.fileno())
        # Why the worker stopped: every later request fails the same way.
        self.failure: WorkerFailed | None = None
        self._turns: deque[object] = deque()
        self._turn_changed = threading.Condition()

    def begin(self, message: dict[str, Any]) -> object:
        """Send a request; returns its ticket for ``turn``."""
        ticket = object()
        with self._turn_changed:
            self.send(message)  # under the lock: requests and turns in the same order
            self._turns.append(ticket)
        return ticket

    @contextmanager
    def turn(self, ticket: object) -> Iterator[None]:
        """Wait until the replies to ``ticket``'s request are next in the pipe; the turn
        passes on when the block ends (also on failure: the next request then sees
        the worker's failure)."""
        with self._turn_changed:
            while self._turns[0] is not ticket:
                self._turn_changed.wait()
        try:
            yield
        except BaseException:
            # Replies to this request may still be in the pipe: the next request must
            # not take them for its own, so the worker is of no more use.
            if self.failure is None:
                self.failure = WorkerFailed("an earlier request to a worker process failed", 1)
            raise
        finally:
            with self._turn_changed:
                self._turns.popleft()
                self._turn_changed.notify_all()

    def send(self, message: dict[str, Any]) -> None:
        if self.failure is not None:
            raise self.failure
        try:
            self.channel.send(message)
        except OSError:
            self.failure = WorkerFailed("a worker process ended unexpectedly", 1)
            raise self.failure from None

    def recv(self) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        message = self.channel.recv()
        if message is None:
            self.failure = WorkerFailed("a worker process ended unexpectedly", 1)
        elif message.get("op") == "failed":
            self.failure = WorkerFailed.from_message(message)
        else:
            return message
        raise self.failure

    def close(self) -> None:
        """End the worker (it exits when its input closes) and reap it."""
        try:
            self.channel.close()
        except OSError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def file_threads(lanes: Sequence[Worker]) -> int:
    """How many threads of this process read or write files beside ``lanes``: one per
    core the worker processes leave, at least one when there is no worker."""
    return max(0 if lanes else 1, (os.cpu_count() or 1) - len(lanes))


def lane_slots(lanes: Sequence[Worker]) -> list[Worker]:
    """Each worker, once for every pool thread that is to feed it (LANE_THREADS)."""
    return [lane for lane in lanes for _ in range(LANE_THREADS)]


class Workers:
    """Worker processes forked now, while this process has one thread."""

    def __init__(self, count: int, clock: Clock) -> None:
        """Fork ``count`` workers (none if this process already has a second thread);
        they keep ``clock`` for the files they back up."""
        self.workers: list[Worker] = []
        if count <= 0 or not hasattr(os, "fork") or thread_count() > 1:
            return
        for _ in range(count):
            to_child = os.pipe()
            from_child = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's code
                code = 0
                try:
                    for worker in self.workers:  # its siblings' pipes are not its own
                        for fd in worker._fds:
                            os.close(fd)
                    os.close(to_child[1])
                    os.close(from_child[0])
                    channel = Channel(os.fdopen(to_child[0], "rb"), os.fdopen(from_child[1], "wb"))
                    _serve(channel, clock)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            os.close(to_child[0])
            os.close(from_child[1])
            channel = Channel(os.fdopen(from_child[0], "rb"), os.fdopen(to_child[1], "wb"))
            self.workers.append(Worker(pid, channel))

    def for_backup(self, repo: Repository, url: str) -> list[Worker]:
        """Set every worker up to back up files into ``repo`` (at ``url``); none when
        the repository lives in this process's memory."""
        return self._set_up("backup", repo, url)

    def for_restore(self, repo: Repository, url: str) -> list[Worker]:
        """Set every worker up to restore files from ``repo`` (at ``url``); the
        restorer then names the target. None when the repository is in memory."""
        return self._set_up("restore", repo, url)

    def _set_up(self, op: str, repo: Repository, url: str) -> list[Worker]:
        if not self.workers or url.startswith("memory:"):
            return []
        setup = {
            "op": op,
            "encryption_key": repo.master.encryption_key,
            "id_key": repo.master.id_key,
            "seed": repo.master.chunker_seed,
            "config": msgspec.msgpack.encode(repo.config),
            "pack_size": repo.pack_target_size,
            "url": url,
        }
        for worker in self.workers:
            worker.send(setup)
        return list(self.workers)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []


def _serve(channel: Channel, clock: Clock) -> None:
    become_child(WORKER_NAME)
    setup = channel.recv()
    if setup is None:
        return
    try:
        if setup.get("op") == "backup":
            _serve_backup(channel, setup, clock)
        elif setup.get("op") == "restore":
            _serve_restore(channel, setup)
    except StrongroomError as e:
        channel.send(
            {
                "op": "failed",
                "message": str(e),
                "exit_code": e.exit_code,
                "hint": e.hint,
                "details": e.details,
            }
        )
    except Exception as e:  # a bug: the parent reports it as one, with our traceback
        channel.send(
            {
                "op": "failed",
                "message": f"internal error in a worker process: {type(e).__name__}: {e}",
                "exit_code": 1,
                "hint": "rerun with -v for a traceback and report it",
                "details": {"traceback": traceback.format_exc()},
            }
        )


def _repository(setup: dict[str, Any]) -> Repository:
    """The parent's repository, opened from its setup message (no index: the parent
    decides what is stored)."""
    master = MasterKey(setup["encryption_key"], setup["id_key"], setup["seed"])
    config = decode_as(setup["config"], RepoConfig, "config", "config")
    repo = Repository(open_backend(setup["url"]), master, config, "")
    repo.pack_target_size = int(setup["pack_size"])
    return repo


def _serve_backup(channel: Channel, setup: dict[str, Any], clock: Clock) -> None:
    from strongroom.engine.archiver import Archiver
    from strongroom.engine.files_cache import FilesCache

    repo = _repository(setup)
    sink = ChildSink(channel, repo)
    archiver = Archiver(None, clock, FilesCache(None), sink=sink, workers=1)
    try:
        while (message := channel.recv()) is not None:
            op = message.get("op")
            if op == "batch":
                outcome = archiver.read_files(
                    [(bytes(p), int(i), int(s), bool(k)) for p, i, s, k in message["files"]]
                )
                channel.send({"op": "done", **outcome})
            elif op == "finish":
                sink.finish()
                channel.send({"op": "finished"})
            elif op == "discard":
                sink.discard()
                channel.send({"op": "discarded"})
    finally:
        sink.discard()


def _serve_restore(channel: Channel, setup: dict[str, Any]) -> None:
    from strongroom.engine.restorer import Restorer

    restorer = Restorer(_repository(setup))
    try:
        while (message := channel.recv()) is not None:
            op = message.get("op")
            if op == "target":
                restorer.attach_target(
                    bytes(message["path"]),
                    (int(message["device"]), int(message["inode"])),
                    owner=bool(message["owner"]),
                )
                channel.send({"op": "ready"})
            elif op == "restore":
                channel.send({"op": "restored", **restorer.restore_files(message["files"])})
    finally:
        restorer.detach_target()


# A worker compresses the blobs it offers while their claim is out when at least this
# share of those offered lately were granted; each answer moves the share this much.
SPECULATE_SHARE = 0.5
SHARE_WEIGHT = 0.25


class ChildSink:
    """A BlobSink in a worker process: claims are the parent's to decide, packs are
    written here and reported to the parent once published."""

    remote = False

    def __init__(self, channel: Channel, repo: Repository) -> None:
        self._channel = channel
        self._repo = repo
        self.id_key = repo.master.id_key
        self._writer: PackWriter | None = None
        # Blobs compressed while a claim was out: frame, or None (stored raw).
        self._prepared: dict[bytes, bytes | None] = {}
        # The share of recently offered blobs the parent granted (a moving average):
        # compressing while a claim is out pays when most are new (a first backup),
        # and wastes the CPU when most are already stored (a new client whose files
        # the repository holds from others).
        self._granted_share = 1.0

    def new_chunker(self) -> Chunker:
        return self._repo.chunker()

    def known(self, bid: bytes) -> bool:
        raise NotImplementedError("the files cache is the parent's")

    def known_contents(self, contents: Sequence[list[bytes | int]]) -> list[bool]:
        raise NotImplementedError("the files cache is the parent's")

    def claim(self, bid: bytes) -> bool:
        return self.claim_many([bid])[0]

    def claim_many(
        self, bids: list[bytes], data: Sequence[bytes | memoryview] | None = None
    ) -> list[bool]:
        """Ask the parent; while it answers, compress and check ``data`` when most
        blobs offered lately were new (the round trip then costs no time)."""
        if not bids:
            return []
        self._channel.send({"op": "claim", "ids": bids})
        if data is not None and self._granted_share >= SPECULATE_SHARE:
            level = self._repo.config.compression_level
            for bid, blob in zip(bids, data, strict=True):
                if bid not in self._prepared:
                    self._prepared[bid] = compress_blob(level, blob)
        reply = self._channel.recv_reply("claimed")
        if reply is None:
            raise WorkerFailed("the parent process went away", 1)
        granted = [bool(g) for g in reply["granted"]]
        if data is not None:
            share = sum(granted) / len(granted)
            self._granted_share += (share - self._granted_share) * SHARE_WEIGHT
        for bid, given in zip(bids, granted, strict=True):
            if not given:
                self._prepared.pop(bid, None)  # somebody else stores it
        return granted

    def store(
        self, blob_type: int, bid: bytes, data: bytes | memoryview, compressed: bytes | None = None
    ) -> Stored:
        if self._writer is None:
            self._writer = self._repo.new_pack_writer(staged=True)
        if compressed is None and bid in self._prepared:
            compressed = self._prepared.pop(bid)
            entry = self._writer.add(blob_type, bid, data, compressed=compressed, raw=True)
        else:
            entry = self._writer.add(blob_type, bid, data, compressed=compressed)
        if self._writer.size >= self._repo.pack_target_size:
            self._publish()
        return Stored(entry.raw_length, entry.length)

    def _publish(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None and writer.sink is not None
        try:
            pack_id, _ = writer.finish()
            writer.sink.publish(pack_name(pack_id))
        except BaseException:
            writer.discard()
            raise
        self._channel.send(
            {
                "op": "pack",
                "id": pack_id,
                "entries": [
                    [e.type, e.id, e.offset, e.length, e.raw_length, e.flags]
                    for e in writer.entries
                ],
            }
        )

    def finish(self) -> None:
        if self._writer is not None:
            if self._writer.entries:
                self._publish()
            else:
                self.discard()

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None

    def commit(self, snapshot: Snapshot) -> str:
        raise NotImplementedError("snapshots are the parent's to write")


def pack_entries(raw: Sequence[Sequence[Any]]) -> list[PackEntry]:
    """A worker's report of a pack's entries, as entries."""
    return [PackEntry(int(t), bytes(i), int(o), int(n), int(r), int(f)) for t, i, o, n, r, f in raw]
