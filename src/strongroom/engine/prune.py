"""Prune: reclaim the space of forgotten data, safely beside any number of backups.

One run of the collector (docs/gc.md has the argument for why each step is safe):

1. Take a shared lock (purpose "prune"; a second collector is refused, exit 11).
2. Read the gc markers and the locks. A final marker is *due* when it is older than the
   grace period (storage timestamps) and every lock it recorded is gone or expired
   long enough ago (LEASE_SAFETY leases).
3. Then, and only then, a fresh listing: snapshots, then index files, then packs (so
   whatever a listed snapshot needs is in the listing); every snapshot's trees are
   walked. A damaged index, snapshot or tree, or a referenced blob that is
   nowhere, stops the run before anything is deleted (exit 13). A listing error stops
   it too: it must never read as "nothing there".
4. Delete the packs of due markers that no snapshot needs (a needed blob with no copy
   elsewhere rescues its pack); rewrite the index files that named them.
5. Try to upgrade the lock to an exclusive one. If no other lock is live (nor expired
   recently), nobody can be writing: list everything again, mark whatever is unused
   and delete it at once. Back to a shared lock, repack partly used packs
   (--max-unused) of any age, verify the copies, write their index; then delete the old
   packs at once too if still nobody writes, or else mark them.
6. Otherwise repack only packs older than the grace period, and mark the unused packs
   (older than the grace period) for a later run: a provisional marker, then the live
   locks, then the final marker.

Deleting comes before writing wherever that is safe, so a prune frees space on a full
disk; a kill at any moment leaves a repository that passes ``check --read-data``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from strongroom.backend import NoSpace, ObjectInfo, ObjectNotFound
from strongroom.clock import Clock
from strongroom.engine.walk import load_tree
from strongroom.errors import IntegrityError, LockedError, UsageError
from strongroom.repository import Repository
from strongroom.repository.crypto import storage_id
from strongroom.repository.gc import (
    DEFAULT_GRACE_S,
    GC_PURPOSE,
    LEASE_SAFETY,
    MARKER_KEEP_S,
    MIN_GRACE_S,
    GcMarker,
    StoredMarker,
    read_markers,
    save_marker,
)
from strongroom.repository.index import RECORD, ChunkIndex, RawBlob, Table, pack_meta
from strongroom.repository.locks import LockInfo, RepositoryLock
from strongroom.repository.pack import PackEntry, PackWriter, cipher_for, open_blob, pack_name
from strongroom.repository.pack import read_header as read_pack_header

DEFAULT_MAX_UNUSED = 10.0  # percent of the repository's stored data
# Index files written by a prune hold at most this many packs each.
INDEX_PACKS_PER_FILE = 4096
# The lease is checked again after this many deletions.
DELETES_PER_LEASE_CHECK = 32


@dataclass(frozen=True)
class PruneOptions:
    grace_s: int = DEFAULT_GRACE_S
    max_unused: float = DEFAULT_MAX_UNUSED  # percent; 100 never repacks
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.grace_s < MIN_GRACE_S:
            raise UsageError(
                f"a grace period of {self.grace_s}s is too short: the minimum is "
                f"{MIN_GRACE_S}s, longer than any writer's lease",
                hint="a prune never skips the grace period; it reclaims at once only "
                "when no backup is running",
            )
        if not 0 <= self.max_unused <= 100:
            raise UsageError(f"--max-unused {self.max_unused}% is not between 0% and 100%")


@dataclass
class PruneResult:
    dry_run: bool = False
    # "at-once": no writer was active, unused packs were deleted in this run;
    # "two-phase": writers were active, unused packs were marked for a later run.
    mode: str = "two-phase"
    snapshots: int = 0
    packs: int = 0  # packs on storage when the run started
    bytes: int = 0
    packs_unused: int = 0  # of those, the ones no snapshot needs (before repacking)
    bytes_unused: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_repacked: int = 0
    blobs_repacked: int = 0
    bytes_repacked: int = 0  # stored bytes of the used blobs copied
    candidates_marked: int = 0
    bytes_marked: int = 0
    packs_waiting: int = 0  # marked, waiting for the grace period or for writers
    bytes_waiting: int = 0
    # Unused but younger than the grace period while writers are active (most likely a
    # running backup's new packs): neither deleted nor marked; a later prune decides.
    packs_deferred: int = 0
    bytes_deferred: int = 0
    index_files_rewritten: int = 0
    markers_removed: int = 0
    notes: list[str] = field(default_factory=list)


Progress = Callable[[str, int, int], None]


@dataclass
class _Pack:
    size: int
    mtime: float


# A blob's marks in the ledger's table (one byte per slot, see _chunktable.c).
REFERENCED = 1  # a snapshot needs it
WALKED = 2  # a tree whose nodes were marked
SEVERAL = 4  # held by more than one pack: its copies are in ``_Ledger.copies``
# Missing blobs named in the error (a broken repository: the run stops anyway).
MISSING_SAMPLE = 5
MISSING_KEPT = 1000


class _Ledger:
    """Every blob the index files name, in a chunk index (16-byte id prefix, pack
    number, stored length: ~45 bytes a blob) whose table keeps a byte of marks per
    blob, instead of sets and dicts of ids (~450 bytes a blob). A blob held by more
    than one pack (after a crash, or a repack) has its copies in a dict: few."""

    def __init__(self) -> None:
        self.index = ChunkIndex(table=Table)
        self.table = self.index.table
        self.stored: list[int] = []  # per pack number: stored bytes of its indexed blobs
        self.copies: dict[bytes, list[int]] = {}  # key -> [pack_no, length, pack_no, ...]

    @property
    def pack_ids(self) -> list[str]:
        return self.index.packs

    @property
    def memory_bytes(self) -> int:
        return self.index.memory_bytes + 120 * len(self.copies)

    def number(self, pack_id: str) -> int:
        number = self.index.pack_number(pack_id)
        if number == len(self.stored):
            self.stored.append(0)
        return number

    def add(self, pack_id: str, blobs: list[RawBlob]) -> None:
        """A pack's entries in an index file (validated tuples); a blob a pack holds is
        counted once however often it is listed."""
        number = self.number(pack_id)
        table, copies_of, stored = self.table, self.copies, 0
        for btype, bid, offset, length, raw_length, flags in blobs:
            key = bid[:16]
            found = table.get(key)
            if found is None:
                meta = pack_meta(btype, raw_length, flags)
                table.put(key, number, offset, length, meta, False)
            else:
                copies = copies_of.get(key)
                if copies is None:
                    if found[0] == number:
                        continue
                    copies = copies_of[key] = [found[0], found[2]]
                    table.mark(key, SEVERAL)
                elif number in copies[::2]:
                    continue
                copies += (number, length)
            stored += length
        self.stored[number] += stored

    def move(self, pack_id: str, entry: PackEntry) -> None:
        """A repacked blob: its new pack is now its only copy that counts (the old one
        is deleted or marked)."""
        number = self.number(pack_id)
        self.index.add(pack_id, entry, replace=True)
        key = entry.id[:16]
        if key in self.copies:
            self.copies[key] = [number, entry.length]
        self.stored[number] += entry.length


@dataclass
class _Keep:
    """Which pack keeps each referenced blob: the table's one pack for most, ``chosen``
    for blobs held by several; ``used``: the stored bytes each pack keeps (only packs
    that keep any)."""

    used: dict[str, int]
    chosen: dict[bytes, int]

    @property
    def needed(self) -> set[str]:
        return set(self.used)


class _View:
    """What storage holds, as of the last listing: packs, index files, and every blob
    the snapshots reference (each tree walked once)."""

    def __init__(self, repo: Repository, progress: Progress) -> None:
        self.repo = repo
        self.progress = progress
        self.packs: dict[str, _Pack] = {}
        self.index_files: dict[str, set[str]] = {}  # index file -> the packs it names
        self.blobs = _Ledger()
        self.snapshots: set[str] = set()
        self._missing: set[bytes] = set()  # referenced, in no index file (kept: a few)
        self._missing_count = 0

    def refresh(self) -> None:
        """List snapshots, then index files, then packs (each is written before the
        one listed ahead of it, so whatever a listed snapshot needs is seen); read the
        index files not read yet; walk the snapshots not walked yet."""
        ids = [i.name.rsplit("/", 1)[-1] for i in list(self.repo.backend.list("snapshots/"))]
        self.repo.load_index()
        damaged = set(self.repo.damaged_markers.values())
        errors = [e for e in self.repo.index_errors if e not in damaged]
        if errors:
            raise IntegrityError(
                "prune refuses to delete anything: "
                + "; ".join(errors[:5])
                + (" ..." if len(errors) > 5 else ""),
                hint="run `strongroom check`, and repair the repository first",
            )
        self._read_index()
        self._list_packs()
        self._walk_snapshots(ids)

    def _list_packs(self) -> None:
        listed: dict[str, _Pack] = {}
        for info in list(self.repo.backend.list("data/")):
            pack_id = _pack_id(info)
            if pack_id is None:
                continue  # not a pack strongroom wrote: never touched
            listed[pack_id] = _Pack(info.size, info.mtime)
        self.packs = listed

    def _read_index(self) -> None:
        infos = list(self.repo.backend.list("index/"))
        new = [i for i in infos if i.name not in self.index_files]
        for done, info in enumerate(new, 1):
            try:
                packs = self.repo.read_index_packs(info.name)
            except ObjectNotFound:
                continue  # replaced meanwhile: its successor is in a later listing
            for pack_id, blobs in packs:
                self.blobs.add(pack_id, blobs)
            self.index_files[info.name] = {pack_id for pack_id, _ in packs}
            del packs
            self.progress("index", done, len(new))

    def _walk_snapshots(self, ids: list[str]) -> None:
        new = [sid for sid in ids if sid not in self.snapshots]
        for done, sid in enumerate(new, 1):
            try:
                snap = self.repo.load_snapshot(sid)
            except UsageError:
                continue  # forgotten while we listed: it needs nothing any more
            except IntegrityError as e:
                raise IntegrityError(f"prune refuses to delete anything: {e}") from None
            self._walk(snap.tree)
            self.snapshots.add(sid)
            self.progress("snapshots", done, len(new))

    def _walk(self, root: bytes) -> None:
        table = self.blobs.table
        stack = [root]
        while stack:
            tree_id = stack.pop()
            marks = table.mark(tree_id, 0)
            if marks >= 0 and marks & WALKED:
                continue
            try:
                nodes = load_tree(self.repo, tree_id)
            except IntegrityError as e:
                raise IntegrityError(f"prune refuses to delete anything: {e}") from None
            if table.mark(tree_id, REFERENCED | WALKED) < 0:
                self._lost(tree_id)  # readable (the repository's index) but not indexed
            for node in nodes:
                for c in node.content:
                    if isinstance(c, bytes) and table.mark(c, REFERENCED) < 0:
                        self._lost(c)
                if node.subtree is not None:
                    stack.append(node.subtree)

    def _lost(self, bid: bytes) -> None:
        if bid in self._missing:
            return
        self._missing_count += 1
        if len(self._missing) < MISSING_KEPT:
            self._missing.add(bid)

    def keepers(self, avoid: set[str]) -> _Keep:
        """For each referenced blob, the pack that keeps it: the only one that holds
        it, or one already kept for another blob, or one outside ``avoid``."""
        ledger = self.blobs
        present = ledger.index.pack_flags(self.packs)
        # Blobs in one pack, summed in C; a pack that is gone loses them.
        used, lost, lost_keys = ledger.table.usage(present, REFERENCED, SEVERAL, MISSING_SAMPLE)
        missing = self._missing_count + lost
        sample = sorted(self._missing)[:MISSING_SAMPLE] + lost_keys
        chosen: dict[bytes, int] = {}
        several: list[tuple[bytes, list[tuple[int, int]]]] = []
        for key, copies in ledger.copies.items():
            if not ledger.table.mark(key, 0) & REFERENCED:
                continue
            places = [
                (copies[i], copies[i + 1]) for i in range(0, len(copies), 2) if present[copies[i]]
            ]
            if not places:
                missing += 1
                sample.append(key)
            elif len(places) == 1:
                chosen[key] = places[0][0]
                used[places[0][0]] += places[0][1]
            else:
                several.append((key, places))
        if missing:
            shown = ", ".join(b.hex()[:16] for b in sample[:MISSING_SAMPLE])
            raise IntegrityError(
                f"prune refuses to delete anything: {missing} blob(s) that snapshots "
                f"reference are missing ({shown})",
                hint="run `strongroom check --read-data`; the next backup re-uploads "
                "what it still has",
            )
        ids = ledger.pack_ids
        for key, places in several:
            pick = next((p for p in places if used[p[0]]), None)
            if pick is None:
                pick = min(
                    places,
                    key=lambda p: (ids[p[0]] in avoid, -self.packs[ids[p[0]]].mtime, ids[p[0]]),
                )
            chosen[key] = pick[0]
            used[pick[0]] += pick[1]
        return _Keep({ids[n]: u for n, u in enumerate(used) if u}, chosen)

    def kept_in(self, keep: _Keep, pack_ids: list[str]) -> Iterable[tuple[str, set[bytes]]]:
        """Each of ``pack_ids`` (in pack number order) with the keys of the blobs it
        keeps; the keys come out of the table as 20-byte records, not as a set of all."""
        index = self.blobs.index
        numbers = sorted(n for p in pack_ids if (n := index.number_of(p)) is not None)
        extra: dict[int, set[bytes]] = {}
        for key, n in keep.chosen.items():
            extra.setdefault(n, set()).add(key)
        records = index.keys_in(pack_ids, REFERENCED, SEVERAL)
        for n in numbers:
            pack_id = index.packs[n]
            keys = extra.get(n, set())
            keys.update(key for _, key in RECORD.iter_unpack(records.get(pack_id, b"")))
            yield pack_id, keys


def _pack_id(info: ObjectInfo) -> str | None:
    parts = info.name.split("/")
    if len(parts) != 3 or len(parts[2]) != 64 or parts[1] != parts[2][:2]:
        return None
    if any(c not in "0123456789abcdef" for c in parts[2]):
        return None
    return parts[2]


class Collector:
    """One prune run over an open repository (see the module docstring)."""

    def __init__(
        self,
        repo: Repository,
        clock: Clock,
        new_lock: Callable[[], RepositoryLock],
        options: PruneOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.repo = repo
        self.clock = clock
        repo.clock = clock
        self.new_lock = new_lock
        self.options = options or PruneOptions()
        self.progress: Progress = progress or (lambda stage, done, total: None)
        self.result = PruneResult(dry_run=self.options.dry_run)
        self.view = _View(repo, self.progress)
        self._lock: RepositoryLock | None = None
        self._deletes = 0

    # --- the run --------------------------------------------------------------------

    def run(self) -> PruneResult:
        lock = self.new_lock()
        if lock.exclusive or lock.purpose != GC_PURPOSE:
            raise ValueError("a collector needs a shared lock with purpose GC_PURPOSE")
        lock.acquire()
        self._lock = lock
        try:
            lock.start_refreshing()
            other = next((o for o in lock.others() if o.purpose == GC_PURPOSE), None)
            if other is not None:
                raise LockedError(
                    f"another prune is running: pid {other.pid} on {other.hostname}",
                    hint="two collections never run at once; wait for it to finish",
                )
            self._collect()
        finally:
            self._lock = None
            lock.release()
        return self.result

    def _collect(self) -> None:
        markers, damaged = self._markers()
        locks = self._locks()
        due = [m for m in markers if self._due(m, locks)]
        self.view.refresh()  # after judging the markers: see docs/gc.md
        r = self.result
        r.snapshots = len(self.view.snapshots)
        r.packs = len(self.view.packs)
        r.bytes = sum(p.size for p in self.view.packs.values())

        marked = {p for m in markers for p in m.marker.candidates}
        keep = self.view.keepers(avoid=marked)
        needed = keep.needed
        unused = [p for p in self.view.packs if p not in needed]
        r.packs_unused = len(unused)
        r.bytes_unused = sum(self.view.packs[p].size for p in unused)
        doomed = [
            p for m in due for p in m.marker.candidates if p in self.view.packs and p not in needed
        ]
        if self.options.dry_run:
            self._dry_run(markers, keep, sorted(set(doomed)))
            return
        self._delete(sorted(set(doomed)), marked)
        for name in damaged:
            self._remove_marker(name, "damaged (never swept)")
        for m in markers:
            if not m.marker.final:
                self._remove_marker(m.name, "left by an interrupted prune")
            elif m in due and self._age(m.mtime) >= MARKER_KEEP_S:
                self._remove_marker(m.name, "done")

        if self._exclusive():
            # Every pack listed now existed while nobody was writing: none is a running
            # backup's, so all may be repacked, whatever their age (as a shared lock
            # again: backups may start meanwhile). Their old packs go at once as well
            # if nobody is writing by then, else they are marked.
            keep, marked = self._at_once()
            assert self._lock is not None
            self._lock.downgrade()
            before = set(self.view.packs)
            keep = self._repack(keep, marked, any_age=True)
            if not self.result.packs_repacked:
                return
            # The repacked packs: their blobs have copies now, and must be kept there.
            sources = frozenset(before - keep.needed - marked)
            if self._exclusive():
                self._at_once(avoid=sources)
            else:
                self._mark(keep.needed, also=sources)
            return
        keep = self._repack(keep, marked, any_age=False)
        self._mark(keep.needed)

    # --- markers and locks ----------------------------------------------------------

    def _markers(self) -> tuple[list[StoredMarker], list[str]]:
        markers, damaged = read_markers(self.repo.backend, self.repo.master)
        return markers, sorted(damaged)

    def _locks(self) -> dict[str, LockInfo]:
        assert self._lock is not None
        return {o.name: o for o in self._lock.others(include_expired=True)}

    @staticmethod
    def _maybe_live(lock: LockInfo) -> bool:
        return lock.age_s <= LEASE_SAFETY * lock.lease_s

    def _age(self, mtime: float) -> float:
        return self.clock.now_ns() / 1e9 - mtime

    def _due(self, m: StoredMarker, locks: dict[str, LockInfo]) -> bool:
        if not m.marker.final or self._age(m.mtime) < self.options.grace_s:
            return False
        return not any(n in locks and self._maybe_live(locks[n]) for n in m.marker.locks)

    def _remove_marker(self, name: str, why: str) -> None:
        try:
            self.repo.backend.remove(name)
        except ObjectNotFound:
            return
        self.result.markers_removed += 1
        if why != "done":
            self.result.notes.append(f"gc marker {name.rsplit('/', 1)[-1][:8]} {why}: removed")

    def _exclusive(self) -> bool:
        """Upgrade to the exclusive lock if no other lock exists at all, not even one
        that expired lately (clock skew); otherwise stay shared."""
        assert self._lock is not None
        try:
            self._lock.upgrade()
        except LockedError:
            return False
        if any(self._maybe_live(o) for o in self._lock.others(include_expired=True)):
            self._lock.downgrade()
            return False
        return True

    # --- deleting -------------------------------------------------------------------

    def _delete(self, doomed: list[str], marked: set[str]) -> None:
        """Delete packs, then rewrite the index files that name them (or packs a
        crashed prune deleted), then nothing else: every step leaves a whole repository."""
        assert self._lock is not None
        self._lock.ensure_valid()
        for pack_id in doomed:
            self._deletes += 1
            if self._deletes % DELETES_PER_LEASE_CHECK == 0:
                self._lock.ensure_valid()
            pack = self.view.packs.pop(pack_id)
            try:
                self.repo.backend.remove(pack_name(pack_id))
            except ObjectNotFound:
                continue
            self.result.packs_deleted += 1
            self.result.bytes_freed += pack.size
        gone = set(doomed) | {p for p in marked if p not in self.view.packs}
        self._rewrite_index(gone)

    def _rewrite_index(self, gone: set[str]) -> None:
        affected = sorted(n for n, packs in self.view.index_files.items() if packs & gone)
        if not affected:
            return
        kept: dict[str, dict[bytes, PackEntry]] = {}
        for name in affected:
            for pack_id, entry in self.repo.read_index_file(name):
                if pack_id not in gone:
                    kept.setdefault(pack_id, {})[entry.id] = entry
        pack_ids = sorted(kept)
        for start in range(0, len(pack_ids), INDEX_PACKS_PER_FILE):
            batch = pack_ids[start : start + INDEX_PACKS_PER_FILE]
            chunk = {p: list(kept[p].values()) for p in batch}
            name = self.repo.write_index(chunk)
            self.view.index_files[name] = set(chunk)
        for name in affected:
            try:
                self.repo.backend.remove(name)
            except ObjectNotFound:
                pass
            del self.view.index_files[name]
            self.result.index_files_rewritten += 1

    # --- repacking ------------------------------------------------------------------

    def _repack_plan(self, keep: _Keep, marked: set[str], *, any_age: bool = False) -> list[str]:
        """Partly used packs to repack, most wasteful first, until the unused space
        left is at most ``max_unused`` percent of the whole. Unless ``any_age``, packs
        younger than the grace period are left alone (they may be a running backup's)."""
        percent = self.options.max_unused
        if percent >= 100:
            return []
        ledger = self.view.blobs
        unused = {p: ledger.stored[ledger.number(p)] - u for p, u in keep.used.items()}
        used_total = sum(keep.used.values())
        allowed = used_total * percent / (100 - percent)
        waste = sum(unused.values())
        order = sorted(
            (p for p, u in unused.items() if u > 0),
            key=lambda p: (-unused[p] / max(1, self.view.packs[p].size), p),
        )
        plan = []
        for pack_id in order:
            if waste <= allowed:
                break
            pack = self.view.packs[pack_id]
            if pack_id in marked:
                continue  # writers avoid it already; a later prune deletes or rescues it
            if not any_age and self._age(pack.mtime) < self.options.grace_s:
                continue  # maybe a running writer's; it can wait for the next prune
            plan.append(pack_id)
            waste -= unused[pack_id]
        return plan

    def _repack(self, keep: _Keep, marked: set[str], *, any_age: bool) -> _Keep:
        """Copy the used blobs of wasteful packs into new, verified packs with their
        index; returns the keepers afterwards (the old packs keep nothing)."""
        plan = self._repack_plan(keep, marked, any_age=any_age)
        if not plan:
            return keep
        writers: dict[int, PackWriter] = {}
        uploaded: list[tuple[str, PackEntry]] = []

        def upload(writer: PackWriter) -> None:
            pack_id, _ = self.repo.upload_pack(writer)
            self._verify(pack_id)
            uploaded.extend((pack_id, entry) for entry in writer.entries)

        try:
            for done, (source, wanted) in enumerate(self.view.kept_in(keep, plan), 1):
                for blob_type, bid, plain in self._used_blobs(source, wanted):
                    writer = writers.get(blob_type)
                    if writer is None:
                        writer = writers[blob_type] = self.repo.new_pack_writer()
                    entry = writer.add(blob_type, bid, plain)
                    self.result.bytes_repacked += entry.length
                    if writer.size >= self.repo.pack_target_size:
                        del writers[blob_type]
                        upload(writer)
                self.progress("repack", done, len(plan))
            for blob_type in list(writers):
                upload(writers.pop(blob_type))
            index_name = self.repo.flush_index()
        except NoSpace:
            for writer in writers.values():
                writer.discard()
            self.result.notes.append(
                "repacking skipped: the storage is full (run prune again once space is freed)"
            )
            return keep
        now = self.clock.now_ns() / 1e9
        for pack_id in {p for p, _ in uploaded}:
            size = self.repo.backend.stat(pack_name(pack_id)).size
            self.view.packs[pack_id] = _Pack(size, now)
        for pack_id, entry in uploaded:
            self.view.blobs.move(pack_id, entry)
        if index_name is not None:
            self.view.index_files[index_name] = {p for p, _ in uploaded}
        self.result.packs_repacked += len(plan)
        self.result.blobs_repacked += len(uploaded)
        return self.view.keepers(avoid=marked | set(plan))

    def _used_blobs(self, pack_id: str, used: set[bytes]) -> Iterable[tuple[int, bytes, bytes]]:
        """The blobs of a pack whose keys (16-byte id prefixes) are in ``used``."""
        what = f"pack {pack_id[:8]}"
        data = self.repo.backend.load(pack_name(pack_id))
        cipher = cipher_for(self.repo.master, data, what)
        for entry in read_pack_header(self.repo.master, data, what):
            key = entry.id[:16]
            if key in used:
                ciphertext = data[entry.offset : entry.offset + entry.length]
                blob_what = f"{what} blob {entry.id.hex()[:16]}"
                yield (
                    entry.type,
                    entry.id,
                    open_blob(self.repo.master, cipher, entry, ciphertext, blob_what),
                )
                used.discard(key)
        if used:
            raise IntegrityError(f"{what}: the index names blobs it does not hold")

    def _verify(self, pack_id: str) -> None:
        """Read a new pack back whole before anything relies on it (restic#4523)."""
        what = f"new pack {pack_id[:8]}"
        data = self.repo.backend.load(pack_name(pack_id))
        if storage_id(data) != pack_id:
            raise IntegrityError(f"{what}: does not read back as written")
        cipher = cipher_for(self.repo.master, data, what)
        for entry in read_pack_header(self.repo.master, data, what):
            ciphertext = data[entry.offset : entry.offset + entry.length]
            open_blob(self.repo.master, cipher, entry, ciphertext, what)

    # --- the two ways to end --------------------------------------------------------

    def _mark(self, needed: set[str], also: frozenset[str] = frozenset()) -> None:
        """Writers are active: mark unused packs for a later run (those in ``also``
        whatever their age). The lock record is taken after the marker is visible
        (docs/gc.md), so a provisional marker comes first and the final one replaces it."""
        assert self._lock is not None
        self._lock.ensure_valid()
        markers, _ = read_markers(self.repo.backend, self.repo.master)
        marked = {p for m in markers for p in m.marker.candidates}
        candidates = sorted(
            p
            for p, pack in self.view.packs.items()
            if p not in needed
            and p not in marked
            # Young unused packs are likely a running backup's: left for a later run.
            and (p in also or self._age(pack.mtime) >= self.options.grace_s)
        )
        r = self.result
        if candidates:
            provisional = self._save_marker(candidates, [], final=False)
            live = sorted(n for n, o in self._locks().items() if self._maybe_live(o))
            self._save_marker(candidates, live, final=True)
            self.repo.backend.remove(provisional)
            r.candidates_marked = len(candidates)
            r.bytes_marked = sum(self.view.packs[p].size for p in candidates)
        waiting = (marked | set(candidates)) - needed
        r.packs_waiting = sum(1 for p in waiting if p in self.view.packs)
        r.bytes_waiting = sum(self.view.packs[p].size for p in waiting if p in self.view.packs)
        deferred = [p for p in self.view.packs if p not in needed and p not in waiting]
        r.packs_deferred = len(deferred)
        r.bytes_deferred = sum(self.view.packs[p].size for p in deferred)

    def _at_once(self, avoid: frozenset[str] = frozenset()) -> tuple[_Keep, set[str]]:
        """Nobody is writing (this process holds the exclusive lock): list everything
        again and delete every unused pack now, named in a marker first so that a
        writer holding an older index learns of it when it commits. Blobs are kept
        elsewhere than in ``avoid`` where they can be. Returns the keepers and the
        packs markers name."""
        self.result.mode = "at-once"
        assert self._lock is not None
        self._lock.ensure_valid()
        self.view.refresh()
        markers, _ = read_markers(self.repo.backend, self.repo.master)
        marked = {p for m in markers for p in m.marker.candidates}
        keep = self.view.keepers(avoid=marked | avoid)
        needed = keep.needed
        doomed = sorted(p for p in self.view.packs if p not in needed)
        unmarked = [p for p in doomed if p not in marked]
        if unmarked:
            self._save_marker(unmarked, [], final=True)
        self._delete(doomed, marked)
        for m in markers:
            if self._age(m.mtime) >= MARKER_KEEP_S:
                self._remove_marker(m.name, "done")
        return keep, marked | set(unmarked)

    def _save_marker(self, candidates: list[str], locks: list[str], *, final: bool) -> str:
        marker = GcMarker(
            version=1,
            time_ns=self.clock.now_ns(),
            candidates=candidates,
            locks=locks,
            final=final,
            grace_s=self.options.grace_s,
        )
        return save_marker(self.repo.backend, self.repo.master, marker)

    def _dry_run(self, markers: list[StoredMarker], keep: _Keep, doomed: list[str]) -> None:
        r = self.result
        r.mode = "dry-run"
        r.packs_deleted = len(doomed)
        r.bytes_freed = sum(self.view.packs[p].size for p in doomed)
        marked = {p for m in markers for p in m.marker.candidates}
        assert self._lock is not None
        alone = not any(self._maybe_live(o) for o in self._lock.others(include_expired=True))
        plan = self._repack_plan(keep, marked, any_age=alone)
        r.packs_repacked = len(plan)
        needed = keep.needed - set(plan)
        unused = [p for p in self.view.packs if p not in needed and p not in doomed]
        fresh = [
            p
            for p in unused
            if p not in marked and self._age(self.view.packs[p].mtime) >= self.options.grace_s
        ]
        r.candidates_marked = len(fresh)
        r.bytes_marked = sum(self.view.packs[p].size for p in fresh)
        waiting = [p for p in unused if p in marked or p in fresh]
        r.packs_waiting = len(waiting)
        r.bytes_waiting = sum(self.view.packs[p].size for p in waiting)


def prune(
    repo: Repository,
    clock: Clock,
    new_lock: Callable[[], RepositoryLock],
    options: PruneOptions | None = None,
    progress: Progress | None = None,
) -> PruneResult:
    """Run one collection; see the module docstring and docs/gc.md."""
    return Collector(repo, clock, new_lock, options, progress).run()
