"""R8: a writer whose lease expired cannot commit.

A real writer process (short lease) is stopped with SIGSTOP at a step of its backup,
kept stopped past its lease while its old data is forgotten and collected (nobody else
holds a lock, so the space goes at once), then continued with SIGCONT: its lock
refresher must not renew the lapsed lease, and the writer must abort without
committing (exit 11). A writer stopped for less than its lease is waited for instead.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.repository import Repository
from strongroom.repository.gc import LEASE_SAFETY
from tests.conftest import PASSWORD
from tests.reliability.helpers import (
    SEED,
    assert_check_ok,
    assert_restored_exactly,
    backup,
    cli_json,
    manifest,
    restore,
    snapshot_ids,
    write_tree,
)

WRITER = r"""
import os, socket, sys, time
from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.errors import StrongroomError
from strongroom.repository import Repository
from strongroom.repository.locks import RepositoryLock

repo_path, src, step, lease, go = sys.argv[1:6]
backend = LocalBackend(repo_path)
clock = SystemClock()
lock = RepositoryLock(backend, clock, exclusive=False, hostname=socket.gethostname(),
                      purpose="backup r8", lease_s=float(lease)).acquire()
lock.start_refreshing()
repo = Repository.open(backend, os.environ["STRONGROOM_PASSWORD"].encode())
repo.load_index()
stopped = False


def on_step(name):
    global stopped
    if name == step and not stopped:
        stopped = True
        print("at", name, flush=True)
        while not os.path.exists(go):
            time.sleep(0.01)


code = 0
try:
    archiver = Archiver(repo, clock, on_step=on_step, before_commit=lock.ensure_valid)
    snap = archiver.backup(BackupRequest([src], client="r8")).snapshot
    print("committed", snap.id, flush=True)
except StrongroomError as e:
    print("refused", type(e).__name__, e, flush=True)
    code = e.exit_code
finally:
    lock.release()
sys.exit(code)
"""


def _start_writer(
    repo: Path, src: Path, step: str, lease: float, go: Path
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(repo), str(src), step, str(lease), str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != f"at {step}":
        proc.kill()
        raise AssertionError(f"the writer did not reach {step}: {line!r} {proc.stderr.read()}")
    return proc


@pytest.fixture
def world(repo_path: Path, tmp_path: Path) -> tuple[Path, str, str, Path, Path]:
    """A repository with an old snapshot (to be forgotten) and a kept one; the writer's
    tree holds the old files (it deduplicates against them) and new ones."""
    rng = random.Random(SEED)
    old_src, kept_src = tmp_path / "old", tmp_path / "kept"
    write_tree(old_src, rng, files=20, sizes=(3_000, 40_000), prefix="o")
    write_tree(kept_src, rng, files=10, sizes=(3_000, 40_000), prefix="k")
    old = backup(repo_path, old_src, "old")["snapshot_id"]
    kept = backup(repo_path, kept_src, "kept")["snapshot_id"]
    src = tmp_path / "writer"
    shutil.copytree(old_src, src)
    write_tree(src / "new", rng, files=5, sizes=(30_000,), prefix="n")
    return repo_path, old, kept, kept_src, src


@pytest.mark.parametrize("step", ["pack-written", "index-written", "before-snapshot"])
def test_a_writer_stopped_past_its_lease_aborts_without_committing(
    world: tuple[Path, str, str, Path, Path], tmp_path: Path, step: str
) -> None:
    repo, old, kept, kept_src, src = world
    lease = 1.0
    go = tmp_path / "go"
    writer = _start_writer(repo, src, step, lease, go)
    try:
        os.kill(writer.pid, signal.SIGSTOP)
        Repository.open(LocalBackend(repo), PASSWORD.encode()).remove_snapshot(old)
        # Past its lease, and past the margin a collector allows for clock skew.
        time.sleep(LEASE_SAFETY * lease + 1.5)

        result, doc = cli_json("--repo", str(repo), "prune")

        assert result.code == 0, result.stderr
        assert doc["mode"] == "at-once" and doc["packs_deleted"] > 0, doc
        go.touch()
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    out, err = writer.communicate(timeout=120)

    assert writer.returncode == 11, (writer.returncode, out, err)
    assert out.startswith("refused LockedError") and "expired" in out, out
    assert snapshot_ids(repo) == [kept]
    assert_check_ok(repo, "after a writer stopped past its lease came back")
    target = tmp_path / "restore"
    r = restore(repo, kept, target)
    assert r.code == 0, r.stderr
    assert_restored_exactly(target, kept_src, manifest(kept_src))
    # And the next backup of that tree stores again what was collected.
    again = backup(repo, src, "r8")["snapshot_id"]
    assert_check_ok(repo, "after the next backup")
    target = tmp_path / "restore-again"
    assert restore(repo, again, target).code == 0
    assert_restored_exactly(target, src, manifest(src))


def test_a_writer_stopped_within_its_lease_is_waited_for(
    world: tuple[Path, str, str, Path, Path], tmp_path: Path
) -> None:
    repo, old, kept, _, src = world
    go = tmp_path / "go"
    writer = _start_writer(repo, src, "before-snapshot", 600.0, go)
    try:
        os.kill(writer.pid, signal.SIGSTOP)
        Repository.open(LocalBackend(repo), PASSWORD.encode()).remove_snapshot(old)

        result, doc = cli_json("--repo", str(repo), "prune")

        assert result.code == 0, result.stderr
        assert doc["mode"] == "two-phase" and doc["packs_deleted"] == 0, doc
        go.touch()
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    out, err = writer.communicate(timeout=120)

    assert writer.returncode == 0, (out, err)
    sid = out.split()[1]
    assert sorted(snapshot_ids(repo)) == sorted([kept, sid])
    result, doc = cli_json("--repo", str(repo), "prune")
    assert result.code == 0 and doc["mode"] == "at-once", doc
    assert_check_ok(repo, "after the stopped writer committed")
    target = tmp_path / "restore"
    assert restore(repo, sid, target).code == 0
    assert_restored_exactly(target, src, manifest(src))
