"""The checker: is every snapshot's data there and intact?

Structure: index files, snapshots and trees decrypt and parse; every blob a snapshot
needs is in the index; every indexed pack exists. With ``read_data`` it also reads
packs, checks each against its name (SHA-256), authenticates every blob and compares
it with its keyed id. Damage is then traced to the snapshots and paths it affects.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from strongroom.backend import ObjectNotFound
from strongroom.engine.direct import object_ranges
from strongroom.engine.walk import load_tree
from strongroom.errors import IntegrityError
from strongroom.repository import DATA, Repository
from strongroom.repository.crypto import PackCipher
from strongroom.repository.index import RECORD
from strongroom.repository.pack import (
    DATA_OFFSET,
    TRAILER,
    PackEntry,
    cipher_for,
    header_span,
    pack_name,
    parse_header,
    verify_blob,
)
from strongroom.repository.tree import DIR, FILE


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    # snapshot id -> paths whose data is damaged or missing
    affected: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def select_subset(pack_ids: list[str], subset: str | None) -> list[str]:
    """Packs to read: all, ``P%`` of them, or bucket ``n/m``, chosen by id, so repeatable."""
    if subset is None:
        return pack_ids
    try:
        if subset.endswith("%"):
            fraction = float(subset[:-1]) / 100
            if not 0 < fraction <= 1:
                raise ValueError
            return [
                p
                for p in pack_ids
                if int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) < fraction * 0x1_0000_0000
            ]
        n, m = (int(x) for x in subset.split("/"))
        if not 1 <= n <= m:
            raise ValueError
        return [p for p in pack_ids if int(p[:8], 16) % m == n - 1]
    except ValueError:
        raise ValueError(f"invalid subset {subset!r}: use P% (0-100] or n/m") from None


@dataclass
class _PackRead:
    """What reading one pack found."""

    packs_read: int = 0
    bytes_read: int = 0
    blobs_read: int = 0
    errors: list[str] = field(default_factory=list)
    bad: set[bytes] = field(default_factory=set)
    seen: set[bytes] = field(default_factory=set)


NONE = memoryview(b"")  # no blob indexed in a pack
# A pack is read in pieces of about this size (and a bigger blob whole).
READ_PIECE = 4 << 20


class Checker:
    def __init__(
        self, repo: Repository, progress: Callable[[str, int, int], None] | None = None
    ) -> None:
        self.repo = repo
        self.progress = progress or (lambda stage, done, total: None)

    def check(self, read_data: bool = False, subset: str | None = None) -> CheckResult:
        result = CheckResult()
        repo = self.repo
        for key in repo.list_keys():
            if key.damaged:
                result.errors.append(
                    f"key {key.id[:8]}: damaged key file"
                    + (" (the one in use: add a new key with `key add` now)" if key.current else "")
                )
        repo.load_index()
        result.errors.extend(repo.index_errors)
        if repo.missing_packs:
            # An error only through what it costs: the snapshot walk below names every
            # path whose data is not available from another pack.
            result.notes.append(
                f"{len(repo.missing_packs)} pack(s) named in the index are missing: "
                + ", ".join(sorted(p[:8] for p in repo.missing_packs)[:10])
            )
        stored = dict(repo.packs())
        result.packs = len(stored)
        indexed = set(repo.index.packs)
        orphans = [p for p in stored if p not in indexed]
        if orphans:
            result.notes.append(
                f"{len(orphans)} pack(s) not in any index (left by an interrupted backup; "
                "harmless, reclaimed by prune)"
            )
        present = sorted(indexed & stored.keys())
        for pack_id in present:
            if not storage_id_shape(pack_id):
                result.errors.append(f"pack {pack_id[:8]}: malformed name")

        bad_blobs: set[bytes] = set()
        if read_data:
            to_read = select_subset(present, subset)
            keys = repo.index.keys_in(to_read)
            # Packs are read and verified on one thread per core (decryption,
            # decompression and hashing release the GIL); results are taken in order.
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                reads = [
                    pool.submit(self._read_pack, pack_id, stored[pack_id], keys.get(pack_id, NONE))
                    for pack_id in to_read
                ]
                for done, read in enumerate(reads, 1):
                    found = read.result()
                    result.packs_read += found.packs_read
                    result.bytes_read += found.bytes_read
                    result.blobs_read += found.blobs_read
                    result.errors.extend(found.errors)
                    bad_blobs |= found.bad
                    self.progress("read-data", done, len(to_read))

        snapshots = repo.snapshots(
            on_error=lambda sid, e: result.errors.append(f"snapshot {sid[:8]}: {e}")
        )
        result.snapshots = len(snapshots)
        checked_trees: dict[bytes, bool] = {}
        for done, snap in enumerate(snapshots, 1):
            paths: list[str] = []
            self._check_tree(snap.tree, b"", bad_blobs, checked_trees, paths, result)
            if paths:
                result.affected[snap.id] = paths
                for path in paths[:20]:
                    result.errors.append(f"snapshot {snap.id[:8]} ({snap.client}): {path}")
                if len(paths) > 20:
                    result.errors.append(
                        f"snapshot {snap.id[:8]}: ... and {len(paths) - 20} more paths"
                    )
            self.progress("snapshots", done, len(snapshots))
        result.trees = len(checked_trees)
        return result

    def _read_pack(self, pack_id: str, size: int, expected: memoryview) -> _PackRead:
        """Read one pack front to back, in pieces of about READ_PIECE, checking it
        against its name and every blob in it; the 16-byte id prefix of every damaged
        blob goes into ``bad``. ``expected``: the index's records of the pack's blobs
        (``ChunkIndex.keys_in``)."""
        found = _PackRead()
        what = f"pack {pack_id[:8]}"
        expected_keys = {key for _, key in RECORD.iter_unpack(expected)}
        try:
            self._read_blobs(pack_id, size, what, found)
        except ObjectNotFound:
            found.errors.append(f"{what}: missing")
            found.bad.update(expected_keys)
            return found
        except IntegrityError as e:
            found.errors.append(f"{e}; all {len(expected_keys)} blobs in it count as damaged")
            found.bad.update(expected_keys)
            return found
        for key in expected_keys - found.seen:
            found.errors.append(f"{what}: the index names blob {key.hex()} it does not hold")
            found.bad.add(key)
        found.seen = set()  # results wait in order: only what was bad stays
        return found

    def _read_blobs(self, pack_id: str, size: int, what: str, found: _PackRead) -> None:
        repo = self.repo
        name = pack_name(pack_id)
        load = repo.backend.load
        head = load(name, 0, min(size, DATA_OFFSET))
        tail = load(name, max(0, size - TRAILER.size), min(size, TRAILER.size))
        start, hlen = header_span(size, tail, what)
        sealed = load(name, start, hlen)
        entries = parse_header(repo.master, head, sealed, start, what)
        cipher = cipher_for(repo.master, head, what)
        found.packs_read = 1
        found.bytes_read = size
        hasher = hashlib.sha256(head)
        entries.sort(key=lambda e: e.offset)
        # Pieces to read and hash in order: the next entries while they stay within
        # READ_PIECE (one at least), with whatever lies between them (the hash needs
        # every byte). An entry overlapping what was read is read and checked alone.
        pieces: list[tuple[int, int, list[PackEntry]]] = []
        alone: list[PackEntry] = []
        pos = DATA_OFFSET  # every byte before it is hashed
        i, n = 0, len(entries)
        while pos < start:
            while i < n and entries[i].offset < pos:
                alone.append(entries[i])
                i += 1
            taken: list[PackEntry] = []
            end = pos
            while i < n and entries[i].offset >= end:
                entry_end = entries[i].offset + entries[i].length
                if taken and entry_end - pos > READ_PIECE:
                    break
                taken.append(entries[i])
                end = entry_end
                i += 1
            if not taken:  # no blob left, yet bytes before the header: hash them
                end = min(start, pos + READ_PIECE)
            pieces.append((pos, end, taken))
            pos = end
        alone.extend(entries[i:])  # empty entries at the very end
        spans = [(pos, end - pos) for pos, end, _ in pieces]
        for (pos, _, taken), piece in zip(pieces, self._pieces(name, spans), strict=True):
            hasher.update(piece)
            for entry in taken:
                at = entry.offset - pos
                self._check_blob(cipher, entry, piece[at : at + entry.length], what, found)
        for entry in alone:
            self._check_blob(cipher, entry, load(name, entry.offset, entry.length), what, found)
        hasher.update(sealed)
        hasher.update(tail)
        if hasher.hexdigest() != pack_id:
            found.errors.append(f"{what}: contents do not match its name (damaged)")

    def _pieces(self, name: str, spans: list[tuple[int, int]]) -> Iterator[memoryview]:
        """Each ``(offset, length)`` span of pack ``name``: read around the page cache,
        the next while this one is checked, where the pack is a local file not in the
        page cache (engine/direct.py); else loaded one by one. A view is valid until the
        next is taken; a short read is ObjectNotFound, as a short load is."""
        load = self.repo.backend.load
        direct = object_ranges(self.repo.backend, name, spans)
        if direct is None:
            for pos, length in spans:
                yield memoryview(load(name, pos, length))
            return
        for piece in direct:
            if not isinstance(piece, memoryview):
                raise piece
            yield piece

    def _check_blob(
        self,
        cipher: PackCipher,
        entry: PackEntry,
        ciphertext: bytes | memoryview,
        what: str,
        found: _PackRead,
    ) -> None:
        found.seen.add(entry.id[:16])
        try:
            verify_blob(
                self.repo.master, cipher, entry, ciphertext, f"{what} blob {entry.id.hex()[:16]}"
            )
            found.blobs_read += 1
        except IntegrityError as e:
            found.errors.append(str(e))
            found.bad.add(entry.id[:16])

    def _intact(self, bid: bytes, bad: set[bytes]) -> bool:
        """File data that exists, reads back intact, and is stored as data (not a tree)."""
        if bid[:16] in bad:
            return False
        loc = self.repo.lookup(bid)
        return loc is not None and loc.type == DATA

    def _check_tree(
        self,
        tree_id: bytes,
        prefix: bytes,
        bad: set[bytes],
        checked: dict[bytes, bool],
        paths: list[str],
        result: CheckResult,
    ) -> None:
        """Collect into ``paths`` every path under this tree whose data is not intact."""
        if checked.get(tree_id) is True and tree_id[:16] not in bad:
            return
        if tree_id[:16] in bad:
            paths.append((prefix or b"/").decode("utf-8", "replace") + " (directory listing)")
            return
        try:
            nodes = load_tree(self.repo, tree_id)
        except IntegrityError as e:
            paths.append((prefix or b"/").decode("utf-8", "replace") + f" (directory: {e})")
            return
        clean = True
        for node in nodes:
            path = prefix + b"/" + node.name
            if node.type == FILE:
                for item in node.content:
                    if isinstance(item, bytes) and not self._intact(item, bad):
                        paths.append(path.decode("utf-8", "replace"))
                        clean = False
                        break
            elif node.type == DIR and node.subtree is not None:
                before = len(paths)
                self._check_tree(node.subtree, path, bad, checked, paths, result)
                clean = clean and len(paths) == before
        if clean:
            checked[tree_id] = True


def storage_id_shape(pack_id: str) -> bool:
    return len(pack_id) == 64 and all(c in "0123456789abcdef" for c in pack_id)
