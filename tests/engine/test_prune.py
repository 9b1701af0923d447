"""Prune: two-phase collection beside writers, at once without them, repacking, and
refusing to delete anything from a damaged repository or after a listing error.

Storage timestamps come from a FakeClock (``ClockedBackend``), so the grace period,
leases and marker ages can be crossed by moving the clock.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from strongroom.backend import BackendError, LocalBackend, ObjectInfo, StagedObject
from strongroom.backend.base import Backend, TransientError
from strongroom.clock import FakeClock
from strongroom.engine import prune as prune_module
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.prune import REFERENCED, Collector, PruneOptions, PruneResult, _Pack, _View
from strongroom.engine.walk import walk
from strongroom.errors import IntegrityError, LockedError, UsageError
from strongroom.repository import TEST_KDF, Repository
from strongroom.repository.gc import DEFAULT_GRACE_S, GC_PURPOSE, MIN_GRACE_S
from strongroom.repository.index import NATIVE, PyTable
from strongroom.repository.locks import RepositoryLock
from strongroom.repository.pack import DATA, TREE, pack_name
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import Manifest, assert_restored_exactly, manifest

PW = PASSWORD.encode()
LEASE_S = 600.0
GRACE = DEFAULT_GRACE_S
HOST = socket.gethostname()


# --- a backend whose timestamps follow a FakeClock -----------------------------------


class Stamps:
    """Storage timestamps shared by several views of one store."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: dict[str, float] = {}
        self.lock = threading.Lock()

    def stamp(self, name: str) -> None:
        with self.lock:
            self.times[name] = self.clock.now_ns() / 1e9


class ClockedBackend:
    """Any backend, with storage timestamps taken from a FakeClock when an object is
    written. ``before_save`` / ``before_remove`` hooks let a test pause one process's
    writes (each process gets its own view over the shared store and stamps)."""

    def __init__(
        self,
        inner: Backend,
        stamps: Stamps,
        *,
        before_save: Callable[[str], None] | None = None,
        before_remove: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.stamps = stamps
        self.location = inner.location
        self.before_save = before_save or (lambda name: None)
        self.before_remove = before_remove or (lambda name: None)

    def view(self, **hooks: Callable[[str], None]) -> ClockedBackend:
        return ClockedBackend(self.inner, self.stamps, **hooks)

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        return ObjectInfo(info.name, info.size, self.stamps.times.get(info.name, info.mtime))

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self.before_save(name)
        self.inner.save(name, data)
        self.stamps.stamp(name)

    def stage(self, prefix: str) -> StagedObject:
        return _ClockedStaged(self, self.inner.stage(prefix))

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.load(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self._info(self.inner.stat(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            yield self._info(info)

    def remove(self, name: str) -> None:
        self.before_remove(name)
        self.inner.remove(name)

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self) -> None:
        self.inner.create()

    def close(self) -> None:
        self.inner.close()


class _ClockedStaged:
    def __init__(self, backend: ClockedBackend, inner: StagedObject) -> None:
        self._backend = backend
        self._inner = inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def publish(self, name: str) -> None:
        self._backend.before_save(name)
        self._inner.publish(name)
        self._backend.stamps.stamp(name)

    def discard(self) -> None:
        self._inner.discard()


# --- a small world: one repository, a clock, writers and collectors -------------------


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "repo"
        self.clock = FakeClock(start_ns=time.time_ns())
        self.backend = ClockedBackend(LocalBackend(self.path), Stamps(self.clock))
        Repository.init(self.backend, PW, kdf=TEST_KDF, created="", hostname="", username="")
        self.expected: dict[str, tuple[Path, Manifest]] = {}

    def open(self, backend: Backend | None = None) -> Repository:
        repo = Repository.open(backend or self.backend, PW)
        repo.clock = self.clock
        return repo

    def lock(
        self, backend: Backend | None = None, purpose: str = "backup", host: str = HOST
    ) -> RepositoryLock:
        return RepositoryLock(
            backend or self.backend,
            self.clock,
            exclusive=False,
            hostname=host,
            purpose=purpose,
            lease_s=LEASE_S,
        )

    def backup(
        self, src: Path, client: str = "c", repo: Repository | None = None, workers: int = 2
    ) -> str:
        """A backup as `strongroom backup` does it: lock, then index, then archive."""
        lock = self.lock().acquire()
        try:
            if repo is None:
                repo = self.open()
                repo.load_index()
            archiver = Archiver(repo, self.clock, workers=workers, before_commit=lock.ensure_valid)
            snap = archiver.backup(BackupRequest([str(src)], client=client)).snapshot
        finally:
            lock.release()
        self.expected[snap.id] = (src, manifest(src))
        return snap.id

    def forget(self, snapshot_id: str) -> None:
        self.open().remove_snapshot(snapshot_id)
        self.expected.pop(snapshot_id, None)

    def prune(self, backend: Backend | None = None, **options: object) -> PruneResult:
        backend = backend or self.backend
        repo = self.open(backend)
        opts = PruneOptions(**options)  # type: ignore[arg-type]
        return Collector(
            repo, self.clock, lambda: self.lock(backend, purpose=GC_PURPOSE), opts
        ).run()

    def advance(self, seconds: float, *keep_alive: RepositoryLock) -> None:
        """Move time on; the locks given are refreshed as their threads would do
        (every third of a lease), the others are not."""
        while seconds > 0:
            step = min(seconds, LEASE_S / 3)
            self.clock.advance(step)
            seconds -= step
            for lock in keep_alive:
                lock.refresh()

    def packs(self) -> set[str]:
        return {p.name for p in (self.path / "data").rglob("*") if p.is_file()}

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.path)): p.read_bytes()
            for p in self.path.rglob("*")
            if p.is_file() and not p.relative_to(self.path).as_posix().startswith("locks/")
        }

    def assert_whole(self, tmp: Path) -> None:
        """check --read-data passes and every live snapshot restores exactly."""
        r = cli("--repo", str(self.path), "check", "--read-data")
        assert r.code == 0, r.stdout + r.stderr
        live = sorted(p.name for p in (self.path / "snapshots").iterdir())
        assert sorted(self.expected) == live
        for n, (sid, (src, expected)) in enumerate(sorted(self.expected.items())):
            target = tmp / f"restore-{sid[:8]}-{n}-{random.random()}"
            r = cli("--repo", str(self.path), "restore", sid, "--target", str(target))
            assert r.code == 0, r.stderr
            assert_restored_exactly(target, src, expected)


def tree(root: Path, seed: int, files: int = 6, size: int = 40_000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{seed}-{i}").write_bytes(rng.randbytes(size))
    return root


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def pack_ids_of(lab: Lab, snapshot_id: str) -> set[str]:
    """The packs a snapshot's blobs are in (from the index)."""
    repo = lab.open()
    repo.load_index()
    snap = repo.load_snapshot(snapshot_id)
    from strongroom.engine.walk import walk

    packs = set()
    loc = repo.lookup(snap.tree)
    assert loc is not None
    packs.add(loc.pack_id)
    for _, node in walk(repo, snap.tree):
        for item in node.content:
            if isinstance(item, bytes):
                found = repo.lookup(item)
                assert found is not None
                packs.add(found.pack_id)
        if node.subtree is not None:
            found = repo.lookup(node.subtree)
            assert found is not None
            packs.add(found.pack_id)
    return packs


# --- reclaiming ----------------------------------------------------------------------


def test_with_no_backup_running_forgotten_data_is_reclaimed_at_once(
    lab: Lab, tmp_path: Path
) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    kept = lab.backup(tree(tmp_path / "kept", 2))
    only_old = pack_ids_of(lab, old) - pack_ids_of(lab, kept)
    assert only_old
    lab.forget(old)

    result = lab.prune()

    assert result.mode == "at-once"
    assert result.packs_deleted == len(only_old)
    assert result.bytes_freed > 6 * 40_000
    assert lab.packs() == pack_ids_of(lab, kept)
    # The deletion is announced in a marker that stays: writers with an older index learn
    # of it when they commit.
    assert len(list((lab.path / "gc").iterdir())) == 1
    lab.assert_whole(tmp_path)
    again = lab.prune()
    assert (again.packs_deleted, again.index_files_rewritten) == (0, 0)


def test_beside_a_running_backup_unused_packs_wait_for_the_grace_period(
    lab: Lab, tmp_path: Path
) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    kept = lab.backup(tree(tmp_path / "kept", 2))
    only_old = pack_ids_of(lab, old) - pack_ids_of(lab, kept)
    lab.forget(old)
    lab.advance(GRACE + 1)  # the packs are old enough to be marked
    first = lab.lock().acquire()  # a backup that runs on

    marked = lab.prune()
    assert marked.mode == "two-phase"
    assert (marked.candidates_marked, marked.packs_deleted) == (len(only_old), 0)
    assert only_old <= lab.packs()

    lab.advance(GRACE - 60, first)
    early = lab.prune()
    assert early.packs_deleted == 0 and early.packs_waiting == len(only_old)

    # Past the grace period, but the backup that was running at marking time still runs.
    lab.advance(120, first)
    waiting = lab.prune()
    assert waiting.packs_deleted == 0 and waiting.packs_waiting == len(only_old)

    # It finished; another one (started after the marker, so it avoids marked packs)
    # keeps prune from going exclusive: the second phase deletes the marked packs.
    second = lab.lock().acquire()
    first.release()
    swept = lab.prune()
    assert swept.mode == "two-phase"
    assert swept.packs_deleted == len(only_old)
    assert not only_old & lab.packs()
    second.release()
    lab.assert_whole(tmp_path)


def test_an_expired_lease_does_not_hold_a_collection_back(lab: Lab, tmp_path: Path) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    lab.forget(old)
    stalled = lab.lock().acquire()  # a backup stopped and never refreshed again
    assert lab.prune().mode == "two-phase"  # still live: young packs are not even marked
    lab.advance(2 * LEASE_S - 1)
    assert lab.prune().mode == "two-phase"  # expired, but lately: clock skew is possible
    lab.advance(2)
    result = lab.prune()
    assert result.mode == "at-once" and result.packs_deleted > 0
    with pytest.raises(LockedError, match="expired"):
        stalled.ensure_valid()
    stalled.release()
    lab.assert_whole(tmp_path)


def test_a_snapshot_written_after_the_marker_rescues_the_packs_it_needs(
    lab: Lab, tmp_path: Path
) -> None:
    """A snapshot that names data of a marked pack, written before the sweep (here one
    that reuses a forgotten snapshot's tree, as a metadata-only rewrite would): the
    sweep's fresh listing sees it, and the pack stays."""
    src = tree(tmp_path / "src", 1)
    old = lab.backup(src)
    old_packs = pack_ids_of(lab, old)
    snap = lab.open().load_snapshot(old)
    lab.forget(old)
    lab.advance(GRACE + 1)
    writer = lab.lock().acquire()
    assert lab.prune().candidates_marked == len(old_packs)
    new_id = lab.open().save_snapshot(msgspec.structs.replace(snap, client="again"))
    lab.expected[new_id] = (src, manifest(src))
    other = lab.lock().acquire()  # started after the marker; keeps prune two-phase
    writer.release()
    lab.advance(GRACE + 1, other)

    result = lab.prune()

    assert (result.mode, result.packs_deleted) == ("two-phase", 0)
    assert old_packs <= lab.packs()
    other.release()
    lab.assert_whole(tmp_path)
    # Once that snapshot is forgotten too, the same marker's packs go.
    lab.forget(new_id)
    assert lab.prune().packs_deleted == len(old_packs)
    lab.assert_whole(tmp_path)


def test_young_unused_packs_are_not_marked_while_backups_run(lab: Lab, tmp_path: Path) -> None:
    lab.forget(lab.backup(tree(tmp_path / "old", 1)))
    writer = lab.lock().acquire()
    result = lab.prune()
    assert (result.mode, result.candidates_marked, result.packs_deleted) == ("two-phase", 0, 0)
    assert not (lab.path / "gc").exists() or not list((lab.path / "gc").iterdir())
    writer.release()


# --- repacking -----------------------------------------------------------------------


def test_partly_used_packs_are_repacked(lab: Lab, tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 1, files=12, size=30_000)
    first = lab.backup(src, workers=1)  # twelve files in one data pack
    for i in range(0, 12, 2):
        (src / f"f1-{i}").unlink()
    second = lab.backup(src, workers=1)
    lab.forget(first)
    lab.advance(GRACE + 1)

    unlimited = lab.prune(max_unused=100.0)
    assert unlimited.packs_repacked == 0
    assert unlimited.packs_deleted == 1  # the first snapshot's tree pack: wholly unused

    result = lab.prune(max_unused=10.0)

    assert result.mode == "at-once"
    assert result.packs_repacked == 1 and result.blobs_repacked == 6
    stored = sum(p.stat().st_size for p in (lab.path / "data").rglob("*") if p.is_file())
    assert stored < 7 * 30_000
    assert second in lab.expected
    lab.assert_whole(tmp_path)


def test_with_no_backup_running_young_partly_used_packs_are_repacked_too(
    lab: Lab, tmp_path: Path
) -> None:
    """No backup runs, so no pack can be a running backup's: age does not matter."""
    src = tree(tmp_path / "src", 1, files=3, size=2_000)
    (src / "big").write_bytes(random.Random(9).randbytes(300_000))
    first = lab.backup(src, workers=1)  # the big file shares its pack with small ones
    (src / "big").unlink()
    lab.backup(src, workers=1)
    lab.forget(first)
    assert lab.prune(dry_run=True).packs_repacked == 1

    result = lab.prune()

    assert (result.mode, result.packs_repacked) == ("at-once", 1)
    assert result.bytes_freed > 300_000
    stored = sum(p.stat().st_size for p in (lab.path / "data").rglob("*") if p.is_file())
    assert stored < 30_000
    lab.assert_whole(tmp_path)


def test_young_packs_are_not_repacked_beside_a_running_backup(lab: Lab, tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 1, files=3, size=2_000)
    (src / "big").write_bytes(random.Random(9).randbytes(300_000))
    first = lab.backup(src, workers=1)
    (src / "big").unlink()
    lab.backup(src, workers=1)
    lab.forget(first)
    writer = lab.lock().acquire()
    result = lab.prune()
    assert (result.mode, result.packs_repacked, result.packs_deleted) == ("two-phase", 0, 0)
    writer.release()


def test_repacking_beside_a_running_backup_marks_the_old_packs(lab: Lab, tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 1, files=10, size=30_000)
    first = lab.backup(src, workers=1)
    old_packs = pack_ids_of(lab, first)  # one data pack, one tree pack
    for i in range(5):
        (src / f"f1-{i}").unlink()
    lab.backup(src, workers=1)
    lab.forget(first)
    lab.advance(GRACE + 1)
    writer = lab.lock().acquire()

    result = lab.prune(max_unused=0.0)

    assert result.mode == "two-phase" and result.packs_repacked >= 1
    assert old_packs & set(_marked(lab))
    assert old_packs <= lab.packs()
    lab.assert_whole(tmp_path)  # both copies exist: the index finds one
    writer.release()
    lab.advance(GRACE + 1)
    assert lab.prune().packs_deleted >= 1
    assert not old_packs & lab.packs()
    lab.assert_whole(tmp_path)


def test_a_backup_running_during_a_repack_copies_nothing_and_loses_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    """It reused blobs of packs that get repacked and marked under it: at commit it
    finds their new copies (the repack's index), so it copies nothing itself."""
    src = tree(tmp_path / "src", 1, files=10, size=30_000)
    first = lab.backup(src, workers=1)
    old_packs = pack_ids_of(lab, first)
    for i in range(5):
        (src / f"f1-{i}").unlink()
    lab.backup(src, workers=1)
    lab.forget(first)
    lab.advance(GRACE + 1)
    writer_lock = lab.lock().acquire()
    writer_repo = lab.open()
    writer_repo.load_index()  # before the repack: it relies on the old packs

    assert lab.prune(max_unused=0.0).packs_repacked == 1
    before = sum(p.stat().st_size for p in (lab.path / "data").rglob("*") if p.is_file())
    sid = lab.backup(src, repo=writer_repo, workers=1)
    after = sum(p.stat().st_size for p in (lab.path / "data").rglob("*") if p.is_file())

    assert after - before < 30_000, "the commit copied data it had no need to copy"
    writer_lock.release()
    lab.advance(GRACE + 1)
    assert lab.prune().packs_deleted >= 1
    assert not old_packs & lab.packs()
    assert sid in lab.expected
    lab.assert_whole(tmp_path)


def _marked(lab: Lab) -> list[str]:
    from strongroom.repository.gc import read_markers

    repo = lab.open()
    markers, _ = read_markers(repo.backend, repo.master)
    return [p for m in markers for p in m.marker.candidates]


# --- refusing ------------------------------------------------------------------------


class _ListFails(ClockedBackend):
    """Listing one prefix fails, after yielding ``after`` entries."""

    def __init__(self, lab: Lab, prefix: str, after: int) -> None:
        super().__init__(lab.backend.inner, lab.backend.stamps)
        self.failing, self.after = prefix, after

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for n, info in enumerate(super().list(prefix)):
            if prefix == self.failing and n >= self.after:
                break
            yield info
        if prefix == self.failing:
            raise TransientError(f"listing {prefix}: connection reset")


@pytest.mark.parametrize("prefix", ["gc/", "locks/", "snapshots/", "index/", "data/"])
@pytest.mark.parametrize("after", [0, 1])
def test_a_listing_error_aborts_with_nothing_deleted(
    lab: Lab, tmp_path: Path, prefix: str, after: int
) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    lab.backup(tree(tmp_path / "kept", 2))
    lab.forget(old)
    lab.advance(GRACE + 1)
    stay = lab.lock().acquire()  # so that a marker exists, and one due later
    lab.prune()
    stay.release()
    lab.advance(GRACE + 1)
    before = lab.files()
    assert (lab.path / "gc").exists()

    with pytest.raises(BackendError, match="connection reset"):
        lab.prune(_ListFails(lab, prefix, after))

    assert lab.files() == before
    lab.assert_whole(tmp_path)
    assert lab.prune().packs_deleted > 0  # and the next one, with storage healed, works


def test_a_missing_pack_that_a_snapshot_needs_stops_prune(lab: Lab, tmp_path: Path) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    kept = lab.backup(tree(tmp_path / "kept", 2))
    doomed = pack_ids_of(lab, old) - pack_ids_of(lab, kept)
    lab.forget(old)
    data_pack = next(iter(pack_ids_of(lab, kept)))
    (lab.path / pack_name(data_pack)).unlink()
    before = lab.files()

    with pytest.raises(IntegrityError, match="refuses") as info:
        lab.prune()

    assert info.value.exit_code == 13
    assert lab.files() == before and doomed <= lab.packs()


@pytest.mark.parametrize("kind", ["index", "snapshots"])
def test_a_damaged_index_or_snapshot_stops_prune(lab: Lab, tmp_path: Path, kind: str) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    lab.backup(tree(tmp_path / "kept", 2))
    lab.forget(old)
    victim = sorted((lab.path / kind).iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    before = lab.files()

    with pytest.raises(IntegrityError) as info:
        lab.prune()

    assert info.value.exit_code == 13
    assert lab.files() == before


def test_a_damaged_marker_is_removed_never_swept(lab: Lab, tmp_path: Path) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    lab.forget(old)
    lab.advance(GRACE + 1)
    writer = lab.lock().acquire()
    assert lab.prune().candidates_marked > 0
    marker = next((lab.path / "gc").iterdir())
    data = bytearray(marker.read_bytes())
    data[-1] ^= 1
    marker.write_bytes(bytes(data))
    r = cli("--repo", str(lab.path), "check")
    assert r.code == 13 and "gc marker" in r.stderr  # check reports it
    lab.advance(GRACE + 1, writer)
    other = lab.lock().acquire()
    writer.release()

    result = lab.prune()

    assert result.packs_deleted == 0  # its packs were never swept on its word
    assert any("damaged" in n for n in result.notes)
    assert marker.name not in {p.name for p in (lab.path / "gc").iterdir()}
    other.release()
    assert lab.prune().packs_deleted > 0  # marked again, at once this time
    lab.assert_whole(tmp_path)


def test_two_collections_never_run_at_once(lab: Lab) -> None:
    other = lab.lock(purpose=GC_PURPOSE).acquire()
    with pytest.raises(LockedError, match="another prune") as info:
        lab.prune()
    assert info.value.exit_code == 11
    other.release()
    assert not list((lab.path / "locks").iterdir())


def test_the_grace_period_cannot_be_shorter_than_a_lease() -> None:
    with pytest.raises(UsageError, match="too short"):
        PruneOptions(grace_s=MIN_GRACE_S - 1)
    with pytest.raises(UsageError):
        PruneOptions(max_unused=101)


def test_dry_run_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    old = lab.backup(tree(tmp_path / "old", 1))
    lab.backup(tree(tmp_path / "kept", 2))
    lab.forget(old)
    before = lab.files()
    result = lab.prune(dry_run=True)
    assert result.dry_run and result.mode == "dry-run"
    assert result.packs_unused > 0 and result.bytes_unused > 6 * 40_000
    assert lab.files() == before


# --- leases --------------------------------------------------------------------------


def test_a_lock_keeps_its_name_and_an_expired_lease_is_never_renewed(lab: Lab) -> None:
    lock = lab.lock().acquire()
    name = lock.name
    lab.advance(LEASE_S / 2)
    lock.refresh()
    assert lock.name == name
    assert os.path.exists(lab.path / name)  # type: ignore[operator]
    stamp = lab.backend.stamps.times[name]  # type: ignore[index]
    lab.advance(LEASE_S + 1)  # stopped past its lease: its refresh thread wakes up late
    lock.refresh()
    assert lab.backend.stamps.times[name] == stamp  # type: ignore[index]
    with pytest.raises(LockedError, match="expired"):
        lock.ensure_valid()
    lock.release()


# --- blobs held by several packs, and the ledger's memory -----------------------------


def copy_blobs(lab: Lab, snapshot_id: str, types: tuple[int, ...] = (DATA, TREE)) -> str:
    """Store every blob of a snapshot (of these types) again, in one new pack with its
    index (what two writers that did not see each other's index leave); its id."""
    repo = lab.open()
    repo.load_index()
    snap = repo.load_snapshot(snapshot_id)
    blobs = [(TREE, snap.tree)]
    for _, node in walk(repo, snap.tree):
        blobs += [(DATA, c) for c in node.content if isinstance(c, bytes)]
        if node.subtree is not None:
            blobs.append((TREE, node.subtree))
    writer = repo.new_pack_writer()
    for blob_type, bid in dict.fromkeys(b for b in blobs if b[0] in types):
        writer.add(blob_type, bid, repo.load_blob(bid))
    pack_id, _ = repo.upload_pack(writer)
    repo.flush_index()
    return pack_id


def test_blobs_stored_twice_are_kept_once_and_nothing_is_lost(lab: Lab, tmp_path: Path) -> None:
    first = lab.backup(tree(tmp_path / "first", 1))
    second = lab.backup(tree(tmp_path / "second", 2))
    originals = pack_ids_of(lab, second)
    copy = copy_blobs(lab, second)
    lab.forget(first)

    result = lab.prune(max_unused=100)

    # Every blob of `second` is in `copy` and in its original packs: one of the two
    # sets stays, the other goes, and the snapshot restores either way.
    left = lab.packs()
    assert (copy in left) != (originals <= left)
    assert result.packs_deleted >= 1
    lab.assert_whole(tmp_path)
    lab.forget(second)
    assert lab.prune().packs_deleted >= 1
    assert lab.packs() == set()


def test_a_blob_whose_only_copies_are_gone_stops_prune(lab: Lab, tmp_path: Path) -> None:
    kept = lab.backup(tree(tmp_path / "kept", 2))
    # The packs of the file data, found before any copy exists (afterwards the index
    # names whichever copy its files list first).
    repo = lab.open()
    repo.load_index()
    data: set[str] = set()
    for _, node in walk(repo, repo.load_snapshot(kept).tree):
        for bid in node.content:
            if isinstance(bid, bytes):
                location = repo.lookup(bid)
                assert location is not None
                data.add(location.pack_id)
    copy = copy_blobs(lab, kept, (DATA,))
    assert copy not in data
    # Every data pack goes, copies and originals; the trees (in packs of their own) stay
    # readable, so it is the count of lost blobs that stops the run.
    for pack_id in data | {copy}:
        (lab.path / pack_name(pack_id)).unlink()
    before = lab.files()

    with pytest.raises(IntegrityError, match=r"refuses.* blob\(s\) that snapshots reference"):
        lab.prune()

    assert lab.files() == before


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_the_ledger_picks_keepers_like_sets_and_dicts_would(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """The ledger (a hash table with marks, copies aside) against the obvious version
    with a set of referenced ids and a dict of places, on random repositories with
    blobs in several packs and packs that are gone."""
    if not native:
        monkeypatch.setattr(prune_module, "Table", PyTable)
    elif not NATIVE:
        pytest.skip("the C table was not built")
    for seed in range(30):
        rng = random.Random(seed)
        packs = [f"{n:064x}" for n in range(rng.randint(1, 12))]
        present = {p for p in packs if rng.random() < 0.85}
        blobs = [rng.randbytes(32) for _ in range(rng.randint(1, 300))]
        view = _View(None, lambda stage, done, total: None)  # type: ignore[arg-type]
        view.packs = {p: _Pack(1000, float(rng.randint(0, 5))) for p in present}
        places: dict[bytes, list[tuple[str, int]]] = {}
        for bid in blobs:
            for pack_id in rng.sample(packs, rng.choice([1, 1, 1, 2, 3]) if len(packs) > 2 else 1):
                length = rng.randint(1, 5000)
                for _ in range(rng.choice([1, 1, 2])):  # listed twice: counted once
                    view.blobs.add(pack_id, [(DATA, bid, 0, length, length, 0)])
                places.setdefault(bid, []).append((pack_id, length))
        referenced = {bid for bid in blobs if rng.random() < 0.7}
        for bid in referenced:
            assert view.blobs.table.mark(bid, REFERENCED) >= 0
        avoid = {p for p in packs if rng.random() < 0.3}

        # The obvious version: blobs in one place first, then the others in the order
        # they were first stored twice (the ledger's order), preferring a pack already
        # needed, then one not avoided, then the newest.
        lost = [b for b in referenced if not any(p in present for p, _ in places[b])]
        if lost:
            with pytest.raises(IntegrityError, match=f"{len(lost)} blob"):
                view.keepers(avoid)
            continue
        used: dict[str, int] = {}
        several = []
        for bid in blobs:
            if bid not in referenced:
                continue
            here = [(p, n) for p, n in places[bid] if p in present]
            if len(places[bid]) == 1:
                used[here[0][0]] = used.get(here[0][0], 0) + here[0][1]
            else:
                several.append(here)
        for here in several:
            if len(here) == 1:
                used[here[0][0]] = used.get(here[0][0], 0) + here[0][1]
        for here in several:
            if len(here) == 1:
                continue
            pick = next((x for x in here if x[0] in used), None) or min(
                here, key=lambda x: (x[0] in avoid, -view.packs[x[0]].mtime, x[0])
            )
            used[pick[0]] = used.get(pick[0], 0) + pick[1]
        keep = view.keepers(avoid)
        assert keep.used == used, seed
        stored = {p: 0 for p in packs}
        for bid in blobs:
            for pack_id, length in places[bid]:
                stored[pack_id] += length
        assert {p: view.blobs.stored[view.blobs.number(p)] for p in packs} == stored
        # The keys each pack keeps, as repacking asks for them.
        wanted = dict(view.kept_in(keep, sorted(keep.used)))
        assert set(wanted) == set(keep.used)
        for pack_id, keys in wanted.items():
            length_of = {bid[:16]: n for bid in blobs for p, n in places[bid] if p == pack_id}
            assert sum(length_of[k] for k in keys) == keep.used[pack_id]


def test_the_ledger_takes_under_50_bytes_a_blob() -> None:
    if not NATIVE:
        pytest.skip("the C table was not built")
    view = _View(None, lambda stage, done, total: None)  # type: ignore[arg-type]
    count = 200_000
    rng = random.Random(1)
    ids = [rng.randbytes(32) for _ in range(count)]
    for n, bid in enumerate(ids):
        view.blobs.add(f"{n % 500:064x}", [(DATA, bid, 0, 100, 100, 0)])
    for bid in ids[::3]:
        assert view.blobs.table.mark(bid, REFERENCED) == 0
    view.packs = {f"{n:064x}": _Pack(1000, 0.0) for n in range(500)}
    assert len(view.keepers(set()).used) == 500
    per_blob = view.blobs.memory_bytes / count
    assert per_blob < 50, per_blob
