"""R7: garbage collection never deletes what a writer still needs.

A writer is paused at each step (after the dedup lookup, after a pack upload, before
its index write, before its snapshot write) while its old data is forgotten and
collected, the clock moved past the grace period; then it resumes. Either it commits a
snapshot whose data all exists, or it fails cleanly: zero snapshots with missing data.
Also here: writers whose index predates their lock (as the director's shared one
does), a prune killed at every step, prune loops beside concurrent backups, and prune
on a full disk (R12).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import strongroom.repository.repository as repository_module
from strongroom.backend import LocalBackend
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.sink import RepositorySink
from strongroom.errors import IntegrityError, LockedError
from strongroom.repository import Repository
from strongroom.repository.gc import CollectedMeanwhile
from strongroom.repository.locks import RepositoryLock
from tests.conftest import PASSWORD, cli
from tests.engine.test_prune import GRACE, Lab, pack_ids_of, tree
from tests.reliability.helpers import (
    SEED,
    Manifest,
    assert_check_ok,
    assert_restored_exactly,
    backup,
    check,
    cli_json,
    manifest,
    restore,
    snapshot_ids,
    soak_count,
    soak_only,
    write_tree,
)

PAUSE_POINTS = [
    "after-dedup-lookup",
    "after-pack-upload",
    "before-index-write",
    "before-snapshot-write",
]


class _PausingSink(RepositorySink):
    """The real sink; it pauses once after the first blob it did not need to store."""

    def __init__(self, writer: PausedWriter, repo: Repository) -> None:
        super().__init__(repo, writer.lab.clock, writer.on_step, writer.lock.ensure_valid)
        self._writer = writer

    def claim(self, bid: bytes) -> bool:
        fresh = super().claim(bid)
        if not fresh:
            self._writer.hit("after-dedup-lookup")
        return fresh


class PausedWriter:
    """A backup in a thread that stops at ``pause`` until ``go`` is set.

    ``early_index``: load the index before taking the lock, as the director's shared
    repository does (loaded once, then one lock per run)."""

    def __init__(self, lab: Lab, src: Path, pause: str, *, repo: Repository | None = None) -> None:
        self.lab = lab
        self.src = src
        self.pause = pause
        self.reached = threading.Event()
        self.go = threading.Event()
        self._fired = False
        self.backend = lab.backend.view(before_save=self._before_save)
        self.lock = lab.lock(self.backend)
        self.repo = repo
        self.outcome: str | BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def hit(self, point: str) -> None:
        if point == self.pause and not self._fired:
            self._fired = True
            self.reached.set()
            assert self.go.wait(120), "never resumed"

    def on_step(self, step: str) -> None:
        self.hit({"pack-written": "after-pack-upload", "before-snapshot": "before-snapshot-write"}
                 .get(step, step))  # fmt: skip

    def _before_save(self, name: str) -> None:
        if name.startswith("index/"):
            self.hit("before-index-write")

    def start(self) -> PausedWriter:
        self.thread.start()
        assert self.reached.wait(120), f"the writer never reached {self.pause}"
        return self

    def resume(self) -> str | BaseException | None:
        self.go.set()
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.outcome

    def _run(self) -> None:
        try:
            self.lock.acquire()
            try:
                repo = self.repo
                if repo is None:
                    repo = self.lab.open(self.backend)
                    repo.load_index()
                sink = _PausingSink(self, repo)
                archiver = Archiver(repo, self.lab.clock, workers=2, sink=sink,
                                    on_step=self.on_step)  # fmt: skip
                snap = archiver.backup(BackupRequest([str(self.src)], client="writer")).snapshot
                self.outcome = snap.id
            finally:
                self.lock.release()
        except BaseException as e:
            self.outcome = e
            self.reached.set()


def _sources(tmp: Path) -> tuple[Path, Path, Path]:
    """The forgotten snapshot's files; a kept one's; the writer's (the first's files,
    so it deduplicates against them, and new ones)."""
    old = tree(tmp / "old", 1, files=6, size=50_000)
    kept = tree(tmp / "kept", 2, files=4, size=30_000)
    mine = tmp / "writer"
    shutil.copytree(old, mine)
    tree(mine, 3, files=3, size=20_000)
    return old, kept, mine


@pytest.mark.parametrize("alive", [True, False], ids=["writer-alive", "writer-stopped"])
@pytest.mark.parametrize("pause", PAUSE_POINTS)
def test_a_collection_never_deletes_what_a_paused_writer_needs(
    tmp_path: Path, pause: str, alive: bool
) -> None:
    lab = Lab(tmp_path)
    old_src, kept_src, src = _sources(tmp_path)
    old = lab.backup(old_src)
    kept = lab.backup(kept_src)
    only_old = pack_ids_of(lab, old) - pack_ids_of(lab, kept)
    writer = PausedWriter(lab, src, pause).start()
    # Alive: its lease is refreshed by its thread while the clock moves. Stopped: not.
    live = [writer.lock] if alive else []

    lab.forget(old)
    lab.advance(GRACE + 1, *live)
    first = lab.prune()
    lab.advance(GRACE + 1, *live)
    second = lab.prune()
    if alive:
        # Marked, then the marker is past its grace, but it names the writer's lock.
        assert (first.mode, second.mode) == ("two-phase", "two-phase")
        assert first.candidates_marked >= len(only_old)
        assert first.packs_deleted == second.packs_deleted == 0
        assert only_old <= lab.packs()
    else:
        # Its lease long expired: nobody is writing, the space is reclaimed at once.
        assert first.mode == "at-once" and first.packs_deleted >= len(only_old)
        assert not only_old & lab.packs()

    outcome = writer.resume()

    if alive:
        assert isinstance(outcome, str), outcome
        lab.expected[outcome] = (src, manifest(src))
        summary = lab.open().load_snapshot(outcome).summary
        assert summary.bytes_new < summary.bytes_read  # it did reuse the old data
    else:
        assert isinstance(outcome, LockedError) and "expired" in str(outcome), outcome
        assert outcome.exit_code == 11
    final = lab.prune()
    assert final.mode == "at-once"
    assert not only_old & lab.packs()  # the old data is gone in every case...
    lab.assert_whole(tmp_path)  # ...and every snapshot is whole


def test_a_writer_that_starts_after_the_marker_stores_marked_data_anew(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path)
    old_src, kept_src, src = _sources(tmp_path)
    old = lab.backup(old_src)
    lab.backup(kept_src)
    lab.forget(old)
    lab.advance(GRACE + 1)
    running = lab.lock().acquire()
    assert lab.prune().candidates_marked > 0

    sid = lab.backup(src)

    summary = lab.open().load_snapshot(sid).summary
    assert summary.bytes_new >= summary.bytes_read  # nothing reused from marked packs
    running.release()
    other = lab.lock().acquire()
    lab.advance(GRACE + 1, other)
    assert lab.prune().packs_deleted > 0  # the second phase
    other.release()
    lab.assert_whole(tmp_path)


# --- writers whose index predates their lock (the director's shared repository) --------


@pytest.fixture(params=[True, False], ids=["with-commit-check", "without-commit-check"])
def commit_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The negative control shows what the check before each commit prevents."""
    if not request.param:
        monkeypatch.setattr(repository_module.gc, "protect_commit", lambda *args: None)
    return bool(request.param)


def _director_setup(tmp_path: Path) -> tuple[Lab, Path, Repository, RepositoryLock]:
    """The writer's index is loaded, then its old data is forgotten and marked (another
    backup runs, so no at-once deletion); only then does its run take a lock."""
    lab = Lab(tmp_path)
    old_src, kept_src, src = _sources(tmp_path)
    old = lab.backup(old_src)
    lab.backup(kept_src)
    stale = lab.open()
    stale.load_index()
    lab.forget(old)
    lab.advance(GRACE + 1)
    other = lab.lock().acquire()
    assert lab.prune().candidates_marked > 0
    return lab, src, stale, other


def test_data_swept_before_a_stale_writer_commits_fails_it_cleanly(
    tmp_path: Path, commit_check: bool
) -> None:
    lab, src, stale, other = _director_setup(tmp_path)
    writer = PausedWriter(lab, src, "before-snapshot-write", repo=stale).start()
    other.release()
    lab.advance(GRACE + 1, writer.lock)
    swept = lab.prune()  # the writer is live but was not running at marking time
    assert swept.mode == "two-phase" and swept.packs_deleted > 0

    outcome = writer.resume()

    if not commit_check:
        assert isinstance(outcome, str)
        result, doc = check(lab.path)
        assert result.code == 13 and doc["affected"], "expected the unguarded commit to lose data"
        return
    assert isinstance(outcome, CollectedMeanwhile), outcome
    assert outcome.exit_code == 11
    assert len(list((lab.path / "snapshots").iterdir())) == 1
    lab.assert_whole(tmp_path)
    # The same long-lived repository object now stores that data anew.
    lab.backup(src, repo=stale)
    lab.assert_whole(tmp_path)


def test_a_sweep_racing_a_stale_writers_commit_loses_nothing(
    tmp_path: Path, commit_check: bool
) -> None:
    lab, src, stale, other = _director_setup(tmp_path)
    writer = PausedWriter(lab, src, "before-snapshot-write", repo=stale).start()
    other.release()
    lab.advance(GRACE + 1, writer.lock)
    outcome: list[Any] = []

    def commit_in_between(name: str) -> None:
        # The sweep has listed the snapshots and is about to delete: the writer commits.
        if name.startswith("data/") and not outcome:
            outcome.append(writer.resume())

    sweeping = lab.backend.view(before_remove=commit_in_between)
    if not commit_check:
        # The collector's own at-once pass then finds the damage the writer did.
        with pytest.raises(IntegrityError, match="missing"):
            lab.prune(sweeping)
        assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
        result, doc = check(lab.path)
        assert result.code == 13 and doc["affected"], "expected the unguarded commit to lose data"
        return
    swept = lab.prune(sweeping)

    assert swept.packs_deleted > 0 and len(outcome) == 1
    assert isinstance(outcome[0], str), outcome
    lab.expected[outcome[0]] = (src, manifest(src))
    lab.assert_whole(tmp_path)  # it copied what it reused out of the marked packs


# --- a prune killed at every step ----------------------------------------------------

KILLED_PRUNE = r"""
import os, signal, socket, sys, time
from strongroom.backend import LocalBackend
from strongroom.clock import FakeClock
from strongroom.engine.prune import Collector, PruneOptions
from strongroom.repository import Repository
from strongroom.repository.gc import GC_PURPOSE, MIN_GRACE_S
from strongroom.repository.locks import RepositoryLock

root, kill_at, max_unused = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


class Killing(LocalBackend):
    ops = 0

    def _op(self):
        Killing.ops += 1
        if Killing.ops == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def save(self, name, data):
        self._op()
        super().save(name, data)

    def remove(self, name):
        self._op()
        super().remove(name)


backend = Killing(root)
# Everything on storage is three grace periods old for this collector.
clock = FakeClock(start_ns=time.time_ns() + 3 * MIN_GRACE_S * 10**9)
repo = Repository.open(backend, os.environ["STRONGROOM_PASSWORD"].encode())
repo.pack_target_size = 32 * 1024
lock = lambda: RepositoryLock(
    backend, clock, exclusive=False, hostname=socket.gethostname(), purpose=GC_PURPOSE
)
options = PruneOptions(grace_s=MIN_GRACE_S, max_unused=max_unused)
result = Collector(repo, clock, lock, options).run()
print(Killing.ops, result.mode, result.packs_deleted, result.packs_repacked)
"""


def _run_killed_prune(repo: Path, kill_at: int, max_unused: float) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_PRUNE, str(repo), str(kill_at), str(max_unused)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc.returncode, (proc.stdout.split() or [proc.stderr[-2000:]])


def _foreign_lock(repo: Path, name: str) -> None:
    """A live shared lock of a backup on another host (it records a very long lease)."""
    (repo / "locks").mkdir(exist_ok=True)
    doc = {"hostname": "elsewhere.example", "pid": 1, "time_ns": time.time_ns(),
           "exclusive": False, "purpose": "backup", "lease_s": 1e9}  # fmt: skip
    (repo / "locks" / name).write_text(json.dumps(doc))


def _crash_template(
    tmp_path: Path, two_phase: bool
) -> tuple[Path, dict[str, tuple[Path, Manifest]]]:
    """Snapshots over many small packs, one forgotten, partly used packs to repack; for
    the two-phase case, a due marker and another host's backup running."""
    repo = tmp_path / "template"
    assert cli("--repo", str(repo), "init").code == 0
    rng = random.Random(SEED)
    expected: dict[str, tuple[Path, Manifest]] = {}
    srcs = []
    for n in range(3):
        src = tmp_path / f"src{n}"
        write_tree(src, rng, files=30, sizes=(100, 3_000, 20_000), prefix=f"s{n}-")
        if n:
            shutil.copytree(srcs[-1] / "d1", src / "from-before")
        srcs.append(src)
        expected[backup(repo, src, f"c{n}")["snapshot_id"]] = (src, manifest(src))
    first = sorted(expected, key=lambda sid: expected[sid][0].name)[0]
    (repo / "snapshots" / first).unlink()
    del expected[first]
    if two_phase:
        _foreign_lock(repo, "f1")
        code, out = _run_killed_prune(repo, 0, 100.0)
        assert code == 0 and out[1] == "two-phase", out
        (repo / "locks" / "f1").unlink()  # that backup finished: the marker is due
        _foreign_lock(repo, "f2")  # another one runs: no exclusive lock for prune
    return repo, expected


@pytest.mark.parametrize("two_phase", [False, True], ids=["at-once", "two-phase"])
def test_a_prune_killed_at_any_step_leaves_a_whole_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_phase: bool
) -> None:
    monkeypatch.setattr(repository_module, "PACK_TARGET_SIZE", 32 * 1024)
    template, expected = _crash_template(tmp_path, two_phase)
    probe = shutil.copytree(template, tmp_path / "probe")
    code, out = _run_killed_prune(probe, 0, 0.0)
    assert code == 0, out
    total, mode, deleted, repacked = int(out[0]), out[1], int(out[2]), int(out[3])
    assert mode == ("two-phase" if two_phase else "at-once")
    assert deleted > 0 and repacked > 0, out
    for kill_at in range(1, total + 1):
        repo = shutil.copytree(template, tmp_path / f"kill-{kill_at}")
        code, out = _run_killed_prune(repo, kill_at, 0.0)
        assert code == -signal.SIGKILL, (kill_at, code, out)
        assert_check_ok(repo, f"after a prune killed at step {kill_at} of {total}")
        for sid, (src, want) in expected.items():
            target = tmp_path / f"restore-{kill_at}-{sid[:8]}"
            r = restore(repo, sid, target)
            assert r.code == 0, r.stderr
            assert_restored_exactly(target, src, want)
            shutil.rmtree(target)
        code, out = _run_killed_prune(repo, 0, 0.0)  # the next prune finishes the work
        assert code == 0, (kill_at, out)
        assert_check_ok(repo, f"after the prune that followed a kill at step {kill_at}")
        shutil.rmtree(repo)


# --- prune in loops beside concurrent backups ----------------------------------------


def _loop_beside_backups(tmp_path: Path, rounds: int, writers: int) -> None:
    """Writers back up changing trees in a loop (threads, each with its lock and its own
    repository object); the main thread forgets, prunes and moves the clock on by up to
    one and a half grace periods, refreshing the locks of the running writers as their
    threads would. A writer may fail cleanly (its lease or its data went); the end:
    check --read-data, and every snapshot restores exactly."""
    lab = Lab(tmp_path)
    rng = random.Random(SEED)
    live: set[RepositoryLock] = set()
    guard = threading.Lock()
    stop = threading.Event()
    done: list[tuple[str, Path, Manifest]] = []
    failures: list[BaseException] = []
    counts = {"ok": 0, "clean failures": 0}

    def writer_loop(n: int) -> None:
        wrng = random.Random(SEED + n)
        shared = random.Random(7)
        generation = 0
        while not stop.is_set():
            src = tmp_path / f"w{n}-{generation}"
            for i in range(6):
                (src / "shared").mkdir(parents=True, exist_ok=True)
                (src / "shared" / f"s{i}").write_bytes(shared.randbytes(30_000))
            tree(src / "own", wrng.randrange(1000), files=wrng.randrange(1, 5), size=25_000)
            expected = manifest(src)
            generation += 1
            lock = lab.lock()
            try:
                lock.acquire()
            except LockedError:
                time.sleep(0.01)  # prune holds its exclusive lock for a moment
                continue
            with guard:
                live.add(lock)
            try:
                repo = lab.open()
                repo.load_index()
                archiver = Archiver(repo, lab.clock, workers=1, before_commit=lock.ensure_valid)
                sid = archiver.backup(BackupRequest([str(src)], client=f"w{n}")).snapshot.id
                with guard:
                    done.append((sid, src, expected))
                    counts["ok"] += 1
            except LockedError:
                with guard:
                    counts["clean failures"] += 1
            except BaseException as e:  # anything else fails the test
                failures.append(e)
                return
            finally:
                with guard:
                    live.discard(lock)
                lock.release()

    threads = [threading.Thread(target=writer_loop, args=(n,), daemon=True)
               for n in range(writers)]  # fmt: skip
    for t in threads:
        t.start()
    modes: dict[str, int] = {}
    forgotten: set[str] = set()
    try:
        for _ in range(rounds):
            time.sleep(rng.uniform(0, 0.2))
            with guard:
                forgettable = [sid for sid, _, _ in done[:-writers] if sid not in forgotten]
            for sid in rng.sample(forgettable, len(forgettable) // 2):
                lab.open().remove_snapshot(sid)
                forgotten.add(sid)
            result = lab.prune(max_unused=rng.choice([0.0, 10.0, 100.0]))
            modes[result.mode] = modes.get(result.mode, 0) + 1
            with guard:
                running = list(live)
            lab.advance(rng.uniform(0.2, 1.5) * GRACE, *running)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not failures, failures
    assert counts["ok"] >= writers, counts
    lab.expected = {
        sid: (src, expected)
        for sid, src, expected in done
        if (lab.path / "snapshots" / sid).exists()
    }
    lab.prune()
    lab.assert_whole(tmp_path)


def test_prune_in_a_loop_beside_concurrent_backups(tmp_path: Path) -> None:
    _loop_beside_backups(tmp_path, rounds=6, writers=2)


@soak_only
def test_prune_in_a_loop_beside_concurrent_backups_soak(tmp_path: Path) -> None:
    _loop_beside_backups(tmp_path, rounds=soak_count("gc_rounds", 150), writers=4)


CHILD = Path(__file__).with_name("child.py")


def _real_processes(tmp_path: Path, rounds: int, writers: int) -> None:
    """Real `strongroom backup` processes in loops, and real `strongroom prune` runs
    (real clock: unused packs go at once whenever no backup holds a lock)."""
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    stop = threading.Event()
    done: list[tuple[str, Path, Manifest]] = []
    problems: list[str] = []
    guard = threading.Lock()

    def backups(n: int) -> None:
        rng = random.Random(SEED + n)
        generation = 0
        while not stop.is_set():
            src = tmp_path / f"p{n}-{generation}"
            write_tree(src, rng, files=12, sizes=(10, 3_000, 30_000), prefix=f"g{generation}-")
            generation += 1
            proc = subprocess.run(
                [sys.executable, str(CHILD), "cli", "--pack-size", "65536", "--",
                 "--repo", str(repo), "--json", "backup", "--client", f"p{n}", str(src)],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                sid = json.loads(proc.stdout.splitlines()[-1])["snapshot_id"]
                with guard:
                    done.append((sid, src, manifest(src)))
            elif proc.returncode != 11:  # 11: prune held its exclusive lock just then
                problems.append(f"backup exit {proc.returncode}: {proc.stderr[-2000:]}")
                return

    threads = [threading.Thread(target=backups, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    rng = random.Random(SEED)
    modes = []
    forgotten: set[str] = set()
    try:
        for _ in range(rounds):
            time.sleep(rng.uniform(0.2, 1.0))
            with guard:
                forgettable = [sid for sid, _, _ in done[:-writers] if sid not in forgotten]
            r = Repository.open(LocalBackend(repo), PASSWORD.encode())
            for sid in rng.sample(forgettable, len(forgettable) // 2):
                r.remove_snapshot(sid)
                forgotten.add(sid)
            result, doc = cli_json("--repo", str(repo), "prune", "--max-unused",
                                   rng.choice(["0%", "10%", "unlimited"]))  # fmt: skip
            assert result.code == 0, result.stderr
            modes.append(doc["mode"])
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    assert not problems, problems
    result, doc = cli_json("--repo", str(repo), "prune")
    assert result.code == 0 and doc["mode"] == "at-once", (result.stderr, doc)
    assert_check_ok(repo, f"after prune loops beside real backups ({modes})")
    live = set(snapshot_ids(repo))
    restored = 0
    for sid, src, expected in done:
        if sid in live:
            target = tmp_path / f"restore-{sid[:8]}"
            r = restore(repo, sid, target)
            assert r.code == 0, r.stderr
            assert_restored_exactly(target, src, expected)
            shutil.rmtree(target)
            restored += 1
    assert restored >= writers


def test_prune_beside_real_backup_processes(tmp_path: Path) -> None:
    _real_processes(tmp_path, rounds=4, writers=2)


@soak_only
def test_prune_beside_real_backup_processes_soak(tmp_path: Path) -> None:
    _real_processes(tmp_path, rounds=soak_count("gc_process_rounds", 60), writers=3)


# --- R12: prune on a full disk -------------------------------------------------------


def _fill(mount: Path, leave: int) -> Path:
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    filler = mount / "filler"
    with open(filler, "ab") as f:
        f.write(b"\xaa" * max(0, free - leave))
    return filler


def _files(repo: Path) -> list[str]:
    return sorted(
        p.relative_to(repo).as_posix()
        for p in repo.rglob("*")
        if p.is_file() and not p.relative_to(repo).as_posix().startswith("locks/")
    )


@pytest.mark.parametrize("leave_kib", [0, 64])
def test_prune_frees_space_on_a_full_disk(
    tmpfs_factory: Any, tmp_path: Path, leave_kib: int
) -> None:
    """A backup fails on a full disk; the rest is filled but ``leave_kib``. Forgetting
    a snapshot (removing objects needs no space) then pruning frees its data, and the
    backup that failed fits. Prune writes a few small objects (its lock, a marker, an
    index) before it deletes: on a disk with not even that much room it fails with a
    clear error and touches nothing, and works once a few KiB are free."""
    mount = tmpfs_factory.make("disk", "10m")
    repo = mount / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    rng = random.Random(SEED)
    srcs = []
    for n in range(3):
        src = tmp_path / f"src{n}"
        write_tree(src, rng, files=4, big=1, big_size=4 << 20, prefix=f"s{n}-")
        srcs.append(src)
    old = backup(repo, srcs[0], "old")["snapshot_id"]
    kept = backup(repo, srcs[1], "kept")["snapshot_id"]
    too_much = cli("--repo", str(repo), "backup", "--client", "new", str(srcs[2]))
    assert too_much.code == 1, "the disk did not fill up"
    assert "no space" in too_much.stderr.lower() or "full" in too_much.stderr.lower()
    filler = _fill(mount, leave_kib * 1024)
    Repository.open(LocalBackend(repo), PASSWORD.encode()).remove_snapshot(old)
    before = _files(repo)

    result, doc = cli_json("--repo", str(repo), "prune")

    if result.code != 0:
        assert leave_kib == 0, result.stderr
        text = result.stderr.lower()
        assert result.code == 1 and ("no space" in text or "full" in text), result.stderr
        assert "internal error" not in text, result.stderr
        assert _files(repo) == before, "a prune that found no room must not touch anything"
        assert_check_ok(repo, "after a prune that found the disk full")
        os.truncate(filler, max(0, filler.stat().st_size - 16 * 1024))  # a little room
        result, doc = cli_json("--repo", str(repo), "prune")
        assert result.code == 0, result.stderr
    assert doc["mode"] == "at-once" and doc["bytes_freed"] > 4 << 20, doc
    assert_check_ok(repo, "after a prune on a full disk")
    backup(repo, srcs[2], "new")  # the filler is still there: the space came from prune
    filler.unlink()
    assert_check_ok(repo, "after the backup that did not fit before")
    target = tmp_path / "restore"
    r = restore(repo, kept, target)
    assert r.code == 0, r.stderr
    assert_restored_exactly(target, srcs[1], manifest(srcs[1]))
