"""The copier: snapshots from one repository into another, re-identified for its keys.

Two repositories have different secrets, so a blob's id (a keyed hash) in the target is
not its id in the source. Each blob is therefore read from the source (authenticated),
named with the target's id key, and uploaded only when the target's index lacks that
id; every tree is rewritten, since trees name chunk and subtree ids.

Chunk boundaries stay where the source's chunker cut them: re-chunking would mean
reassembling every file. The consequence for deduplication: copies from one source
deduplicate perfectly against each other (the same chunks get the same target ids),
but not against data backed up directly into the target, whose chunker has another
secret seed and so cuts the same file elsewhere. Only files no larger than the minimum
chunk size (stored whole, whatever the seed) meet again.

The target is written like a backup writes it: packs, then the index that describes
them, then the snapshot. Every new pack is read back from storage and every blob in it
authenticated before the index and the snapshot that name it are written. A copied
snapshot records the source snapshot's id and repository (``original``,
``original_repository``); that is how a second copy knows there is nothing to do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from strongroom.errors import IntegrityError, UsageError
from strongroom.repository import DATA, TREE, Node, Repository, Snapshot
from strongroom.repository.crypto import blob_id, storage_id
from strongroom.repository.pack import PackWriter, cipher_for, open_blob, pack_name, read_header
from strongroom.repository.tree import decode_tree, encode_tree

INDEX_CHECKPOINT_PACKS = 8
# Source id -> target id memos; bounded so a copy of a huge repository stays in memory.
MEMO_ENTRIES = 1 << 20


@dataclass(frozen=True)
class CopiedSnapshot:
    source: Snapshot
    target_id: str
    blobs_new: int
    bytes_new: int  # plaintext bytes of the blobs uploaded
    bytes_stored: int  # what they took in the target (compressed, encrypted)


@dataclass
class CopyResult:
    copied: list[CopiedSnapshot] = field(default_factory=list)
    # Source snapshots the target has already: (source snapshot, target snapshot id).
    skipped: list[tuple[Snapshot, str]] = field(default_factory=list)
    failed: list[tuple[Snapshot, str]] = field(default_factory=list)
    blobs_read: int = 0
    bytes_read: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0  # stored bytes (compressed, encrypted) of the new blobs
    blobs_deduplicated: int = 0  # blobs the target had already
    packs_uploaded: int = 0
    packs_verified: int = 0


class TargetDamaged(IntegrityError):
    """A pack just written to the target does not read back intact: the copy stops."""

    hint = "check the target's storage, then run `strongroom check --read-data` on it"


class CopyProgress(Protocol):
    def copied(self, copied: CopiedSnapshot) -> None: ...
    def skipped(self, snapshot: Snapshot, target_id: str) -> None: ...
    def failed(self, snapshot: Snapshot, error: str) -> None: ...


class _NoProgress:
    def copied(self, copied: CopiedSnapshot) -> None:
        pass

    def skipped(self, snapshot: Snapshot, target_id: str) -> None:
        pass

    def failed(self, snapshot: Snapshot, error: str) -> None:
        pass


class _Memo:
    """A bounded map of source ids to target ids; the oldest entries go first."""

    def __init__(self, limit: int = MEMO_ENTRIES) -> None:
        self._map: OrderedDict[bytes, bytes] = OrderedDict()
        self._limit = limit

    def get(self, key: bytes) -> bytes | None:
        return self._map.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._map[key] = value
        if len(self._map) > self._limit:
            self._map.popitem(last=False)


class _TargetWriter:
    """Packs blobs into the target: one data and one tree pack open at a time.

    Each full pack is uploaded, read back from storage and authenticated blob by blob;
    only then may an index file name it (checkpoints every few packs, and at ``flush``).
    """

    def __init__(self, repo: Repository, result: CopyResult) -> None:
        self.repo = repo
        self.result = result
        self._writers: dict[int, PackWriter] = {}
        self._pending: set[bytes] = set()  # in a pack not uploaded yet

    def has(self, bid: bytes) -> bool:
        return bid in self._pending or self.repo.has_blob(bid)

    def add(self, blob_type: int, bid: bytes, data: bytes) -> int:
        """Store one blob the target lacks; returns its stored length."""
        writer = self._writers.get(blob_type)
        if writer is None:
            writer = self._writers[blob_type] = self.repo.new_pack_writer(staged=True)
        entry = writer.add(blob_type, bid, data)
        self._pending.add(bid)
        if writer.size >= self.repo.pack_target_size:
            del self._writers[blob_type]
            self._upload(writer)
            if self.repo.pending_packs() >= INDEX_CHECKPOINT_PACKS:
                self.repo.flush_index()
        return entry.length

    def flush(self) -> None:
        """Upload the partly filled packs and write the index for every verified pack."""
        writers, self._writers = list(self._writers.values()), {}
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

    def discard(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self._writers = {}

    def _upload(self, writer: PackWriter) -> None:
        pack_id, _ = self.repo.upload_pack(writer)
        self.result.packs_uploaded += 1
        for entry in writer.entries:
            self._pending.discard(entry.id)
        try:
            verify_pack(self.repo, pack_id, [e.id for e in writer.entries])
        except IntegrityError as e:
            # The pack is never indexed nor reused (by this repository object, which a
            # director keeps for later copies); nothing more is written to this target.
            self.repo.reject_pack(pack_id)
            raise TargetDamaged(str(e)) from None
        self.result.packs_verified += 1


def verify_pack(repo: Repository, pack_id: str, expected: Sequence[bytes]) -> None:
    """Read a stored pack back and authenticate every blob; IntegrityError on damage."""
    what = f"pack {pack_id[:8]} (just written to {repo.backend.location})"
    data = repo.backend.load(pack_name(pack_id))
    if storage_id(data) != pack_id:
        raise IntegrityError(f"{what}: reads back different from what was written")
    entries = read_header(repo.master, data, what)
    cipher = cipher_for(repo.master, data, what)
    for entry in entries:
        chunk = data[entry.offset : entry.offset + entry.length]
        open_blob(repo.master, cipher, entry, chunk, f"{what} blob {entry.id.hex()[:16]}")
    if sorted(e.id for e in entries) != sorted(expected):
        raise IntegrityError(f"{what}: holds other blobs than were written")


class Copier:
    """Copies snapshots from ``source`` into ``target`` (both open, indexes loaded)."""

    def __init__(
        self,
        source: Repository,
        target: Repository,
        progress: CopyProgress | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        if source.id == target.id:
            raise UsageError(
                f"{target.backend.location} is the source repository itself",
                hint="copy to another repository",
            )
        self.source = source
        self.target = target
        self.progress = progress or _NoProgress()
        # Raises to refuse a commit (for example when the target lock's lease ran out).
        self._before_commit = before_commit or (lambda: None)
        self._trees = _Memo()
        self._blobs = _Memo()
        self._copies: dict[tuple[str, str], str] = {}
        self._target_ids: set[str] = set()
        self._new_plain = 0  # plaintext bytes uploaded for the snapshot being copied

    # --- which snapshots ------------------------------------------------------------

    def _refresh_copies(self) -> None:
        """Learn the target's copies: (source repository id, source snapshot id) -> target
        snapshot id. Only snapshots not seen before are read (damaged ones are left out)."""
        ids = set(self.target.snapshot_ids())
        for sid in sorted(ids - self._target_ids):
            try:
                snap = self.target.load_snapshot(sid)
            except (IntegrityError, UsageError):  # damaged, or removed meanwhile
                continue
            if snap.original:
                self._copies[(snap.original_repository, snap.original)] = sid
        self._target_ids = ids

    def _already_there(self, snap: Snapshot) -> str | None:
        """The target snapshot that is this one, or None: a copy of it, or (for a snapshot
        that is itself a copy from the target) the target snapshot it was copied from."""
        known = self._copies.get((self.source.id, snap.id))
        if known is not None:
            return known
        if snap.original_repository == self.target.id and snap.original in self._target_ids:
            return snap.original
        return None

    def plan(
        self, snapshots: Sequence[Snapshot]
    ) -> tuple[list[Snapshot], list[tuple[Snapshot, str]]]:
        """Split ``snapshots`` into (to copy, [(already there, its target id)])."""
        self._refresh_copies()
        todo: list[Snapshot] = []
        there: list[tuple[Snapshot, str]] = []
        for snap in snapshots:
            known = self._already_there(snap)
            if known is None:
                todo.append(snap)
            else:
                there.append((snap, known))
        return todo, there

    # --- copying --------------------------------------------------------------------

    def copy(self, snapshots: Sequence[Snapshot]) -> CopyResult:
        """Copy each snapshot the target lacks, oldest first.

        A snapshot whose data cannot be read intact from the source is not copied (its
        error is in ``failed``); the others still are. Storage, lock and password
        errors raise.
        """
        result = CopyResult()
        todo, there = self.plan(sorted(snapshots, key=lambda s: (s.time_ns, s.id)))
        for snap, target_id in there:
            result.skipped.append((snap, target_id))
            self.progress.skipped(snap, target_id)
        writer = _TargetWriter(self.target, result)
        try:
            for snap in todo:
                try:
                    copied = self._copy_one(snap, writer, result)
                except TargetDamaged:
                    raise
                except IntegrityError as e:
                    # Blobs already packed stay: they are intact and the next copy
                    # reuses them. No snapshot names the data that could not be read.
                    result.failed.append((snap, str(e)))
                    self.progress.failed(snap, str(e))
                    continue
                if copied is None:  # another copy committed it meanwhile
                    continue
                result.copied.append(copied)
                self.progress.copied(copied)
            writer.flush()
        except BaseException:
            writer.discard()
            raise
        return result

    def _copy_one(
        self, snap: Snapshot, writer: _TargetWriter, result: CopyResult
    ) -> CopiedSnapshot | None:
        before = (result.blobs_uploaded, result.bytes_uploaded)
        self._new_plain = 0
        tree = self._tree(snap.tree, writer, result)
        writer.flush()  # packs verified, then indexed: only then may a snapshot name them
        self._refresh_copies()  # another copy may have committed it meanwhile
        again = self._already_there(snap)
        if again is not None:
            result.skipped.append((snap, again))
            self.progress.skipped(snap, again)
            return None
        copy = msgspec.structs.replace(
            snap, tree=tree, original=snap.id, original_repository=self.source.id, id=""
        )
        self._before_commit()
        target_id = self.target.save_snapshot(copy)
        stored = self.target.load_snapshot(target_id)
        if stored.tree != tree or stored.original != snap.id:
            raise TargetDamaged(f"snapshot {target_id[:8]}: reads back different in the target")
        return CopiedSnapshot(
            source=snap,
            target_id=target_id,
            blobs_new=result.blobs_uploaded - before[0],
            bytes_new=self._new_plain,
            bytes_stored=result.bytes_uploaded - before[1],
        )

    def _tree(self, source_id: bytes, writer: _TargetWriter, result: CopyResult) -> bytes:
        """The target id of a source tree, storing it (and what it names) when missing."""
        known = self._trees.get(source_id)
        if known is not None and writer.has(known):
            return known
        plain = self.source.load_blob(source_id, TREE)
        result.blobs_read += 1
        result.bytes_read += len(plain)
        nodes = decode_tree(plain, f"tree {source_id.hex()[:16]}").nodes
        rewritten = [self._node(node, writer, result) for node in nodes]
        data = encode_tree(rewritten)
        target_id = blob_id(self.target.master.id_key, data)
        self._store(TREE, target_id, data, writer, result)
        self._trees.put(source_id, target_id)
        return target_id

    def _node(self, node: Node, writer: _TargetWriter, result: CopyResult) -> Node:
        if not node.content and node.subtree is None:
            return node
        content: list[bytes | int] = [
            self._data(item, writer, result) if isinstance(item, bytes) else item
            for item in node.content
        ]
        subtree = None if node.subtree is None else self._tree(node.subtree, writer, result)
        return msgspec.structs.replace(node, content=content, subtree=subtree)

    def _data(self, source_id: bytes, writer: _TargetWriter, result: CopyResult) -> bytes:
        known = self._blobs.get(source_id)
        if known is not None and writer.has(known):
            return known
        plain = self.source.load_blob(source_id, DATA)
        result.blobs_read += 1
        result.bytes_read += len(plain)
        target_id = blob_id(self.target.master.id_key, plain)
        self._store(DATA, target_id, plain, writer, result)
        self._blobs.put(source_id, target_id)
        return target_id

    def _store(
        self, blob_type: int, bid: bytes, data: bytes, writer: _TargetWriter, result: CopyResult
    ) -> None:
        if writer.has(bid):
            result.blobs_deduplicated += 1
            return
        result.bytes_uploaded += writer.add(blob_type, bid, data)
        result.blobs_uploaded += 1
        self._new_plain += len(data)
