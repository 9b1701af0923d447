"""Where the archiver's blobs go: straight into a repository, or to a director.

The archiver names chunks, asks whether each is needed, and hands over the ones that
are. ``RepositorySink`` packs and encrypts them into a repository in this process;
the agent (strongroom.agent) implements the same protocol over a pipe, so the heavy
reading, chunking and compression run on the client while the keys stay on the
director.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from strongroom.clock import Clock
from strongroom.repository import TREE, Chunker, Repository, Snapshot
from strongroom.repository.pack import PackEntry, PackWriter

INDEX_CHECKPOINT_PACKS = 8
INDEX_CHECKPOINT_SECONDS = 60.0


@dataclass(frozen=True)
class Stored:
    raw_length: int
    stored_length: int


class BlobSink(Protocol):
    id_key: bytes
    # Whether each question is a round trip to another machine: the archiver then asks
    # ``known_contents`` about the unchanged files of many directories at once.
    remote: bool

    def new_chunker(self) -> Chunker:
        """A chunker with the repository's secret cut points (one per thread)."""

    def known(self, bid: bytes) -> bool:
        """Whether the repository already holds the blob."""

    def known_contents(self, contents: Sequence[list[bytes | int]]) -> list[bool]:
        """For each file's content, whether the repository holds every blob of it
        (ints: holes); one question, where the sink is remote."""

    def claim(self, bid: bytes) -> bool:
        """True when the caller must store the blob: nobody has it or is storing it."""

    def claim_many(
        self, bids: list[bytes], data: Sequence[bytes | memoryview] | None = None
    ) -> list[bool]:
        """``claim`` for each blob in turn (one question, where the sink is remote).
        ``data``: the blobs themselves, which a remote sink may prepare for storing
        while it waits for the answer."""

    def store(
        self, blob_type: int, bid: bytes, data: bytes | memoryview, compressed: bytes | None = None
    ) -> Stored:
        """Store a claimed blob (``compressed``: its verified zstd frame, made elsewhere)."""

    def finish(self) -> None:
        """Write out partly filled packs and the index that describes them."""

    def discard(self) -> None:
        """After a failure: drop unfinished packs."""

    def commit(self, snapshot: Snapshot) -> str:
        """Write the snapshot (after ``finish``); returns its id."""


class RepositorySink:
    """Packs and encrypts blobs into a repository, one pack per worker thread."""

    remote = False

    def __init__(
        self,
        repo: Repository,
        clock: Clock,
        on_step: Callable[[str], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.repo = repo
        self.id_key = repo.master.id_key
        self._clock = clock
        self._on_step = on_step or (lambda step: None)
        # Raises to refuse the commit (for example when this writer's lease expired).
        self._before_commit = before_commit or (lambda: None)
        self._local = threading.local()
        self._writers: list[PackWriter] = []
        self._lock = threading.Lock()
        self._claimed: set[bytes] = set()
        self._tree_writer: PackWriter | None = None
        self._tree_lock = threading.Lock()
        self._last_checkpoint = clock.monotonic()

    def new_chunker(self) -> Chunker:
        return self.repo.chunker()

    def known(self, bid: bytes) -> bool:
        return self.repo.has_blob(bid)

    def known_contents(self, contents: Sequence[list[bytes | int]]) -> list[bool]:
        has_blobs = self.repo.has_blobs
        return [has_blobs(content) for content in contents]

    def claim(self, bid: bytes) -> bool:
        if self.repo.has_blob(bid):
            return False
        with self._lock:
            if bid in self._claimed:
                return False
            self._claimed.add(bid)
            return True

    def claim_many(
        self, bids: list[bytes], data: Sequence[bytes | memoryview] | None = None
    ) -> list[bool]:
        return [self.claim(bid) for bid in bids]

    def store(
        self, blob_type: int, bid: bytes, data: bytes | memoryview, compressed: bytes | None = None
    ) -> Stored:
        if blob_type == TREE:
            with self._tree_lock:
                if self._tree_writer is None:
                    self._tree_writer = self.repo.new_pack_writer(staged=True)
                writer = self._tree_writer
                entry = writer.add(blob_type, bid, data, compressed=compressed)
                full = writer.size >= self.repo.pack_target_size
                if full:
                    self._tree_writer = None
        else:
            writer = self._thread_writer()
            entry = writer.add(blob_type, bid, data, compressed=compressed)
            full = writer.size >= self.repo.pack_target_size
            if full:
                with self._lock:
                    self._writers.remove(writer)
                self._local.writer = None
        if full:
            self._upload(writer)
        return Stored(entry.raw_length, entry.length)

    def _thread_writer(self) -> PackWriter:
        writer: PackWriter | None = getattr(self._local, "writer", None)
        if writer is None:
            writer = self.repo.new_pack_writer(staged=True)
            self._local.writer = writer
            with self._lock:
                self._writers.append(writer)
        return writer

    def _upload(self, writer: PackWriter) -> None:
        self.repo.upload_pack(writer)
        self._uploaded()

    def register_pack(self, pack_id: str, entries: list[PackEntry]) -> None:
        """A pack another process (a worker) published: its blobs become known, and
        are described by the next index checkpoint."""
        self.repo.add_pack(pack_id, entries)
        self._uploaded()

    def _uploaded(self) -> None:
        self._on_step("pack-written")
        now = self._clock.monotonic()
        if (
            self.repo.pending_packs() >= INDEX_CHECKPOINT_PACKS
            or now - self._last_checkpoint > INDEX_CHECKPOINT_SECONDS
        ):
            self._last_checkpoint = now
            if self.repo.flush_index():
                self._on_step("index-written")

    def finish(self) -> None:
        with self._lock, self._tree_lock:
            writers = [*self._writers]
            if self._tree_writer is not None:
                writers.append(self._tree_writer)
            self._writers, self._tree_writer = [], None
        try:
            for writer in writers:
                if writer.entries:
                    self._upload(writer)
                else:
                    writer.discard()
        except BaseException:
            for writer in writers:
                writer.discard()
            raise
        self.repo.flush_index()
        self._on_step("index-written")

    def discard(self) -> None:
        with self._lock, self._tree_lock:
            writers = [*self._writers, self._tree_writer]
            self._writers, self._tree_writer = [], None
        for writer in writers:
            if writer is not None:
                writer.discard()

    def commit(self, snapshot: Snapshot) -> str:
        self._before_commit()
        return self.repo.save_snapshot(snapshot)
