"""R2: power loss loses no acknowledged snapshot.

A shim records every object a backup stores, in order. Each prefix of that sequence is
a state storage could be left in by a power cut (writes are temp file, fsync, rename,
directory fsync, so an object is either whole under its name or absent); the next write
may also be torn, which leaves a partial temp file. Every such state must open and pass
``check --read-data``: garbage is allowed, dangling references are not.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.checker import Checker
from strongroom.repository import TEST_KDF, Repository
from strongroom.testing import FaultyBackend

PASSWORD = b"power-loss"


def _make_source(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(40):
        sub = root / f"d{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.choice([10, 3000, 200_000, 1_500_000])
        (sub / f"f{i}").write_bytes(rng.randbytes(size))


def _record_backup(tmp_path: Path) -> tuple[Path, list[str], Path]:
    """Init a repository, then back up while recording the order of stored objects."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(
        LocalBackend(repo_dir), PASSWORD, kdf=TEST_KDF, created="", hostname="", username=""
    )
    base = {p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()}
    src = tmp_path / "src"
    _make_source(src, 1)
    recorder = FaultyBackend(LocalBackend(repo_dir))
    repo = Repository.open(recorder, PASSWORD)
    repo.pack_target_size = 1 << 20  # many small packs: many interesting prefixes
    repo.load_index()
    Archiver(repo, SystemClock()).backup(BackupRequest(paths=[str(src)], client="pc"))
    assert any(n.startswith("snapshots/") for n in recorder.saved)
    assert not base & set(recorder.saved)
    return repo_dir, recorder.saved, src


def _state(repo_dir: Path, saved: list[str], keep: int, dest: Path, torn: bool) -> Path:
    """A copy of the repository as a power cut after ``keep`` saves would leave it."""
    shutil.copytree(repo_dir, dest)
    for name in saved[keep:]:
        os.unlink(dest / name)
    if torn and keep < len(saved):
        name = saved[keep]
        data = (repo_dir / name).read_bytes()
        tmp = dest / Path(name).parent / f".tmp-{Path(name).name}-torn"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data[: len(data) // 2])
    return dest


@pytest.mark.parametrize("torn", [False, True])
def test_every_prefix_of_a_backup_opens_and_checks(tmp_path: Path, torn: bool) -> None:
    repo_dir, saved, _ = _record_backup(tmp_path)
    assert len(saved) >= 6
    for keep in range(len(saved) + 1):
        state = _state(repo_dir, saved, keep, tmp_path / f"state-{keep}", torn)
        repo = Repository.open(LocalBackend(state), PASSWORD)
        result = Checker(repo).check(read_data=True)
        assert result.ok, (keep, saved[:keep], result.errors)
        snapshots = repo.snapshots()
        committed = any(n.startswith("snapshots/") for n in saved[:keep])
        assert len(snapshots) == (1 if committed else 0)
        shutil.rmtree(state)


def test_a_backup_after_power_loss_reuses_checkpointed_data(tmp_path: Path) -> None:
    repo_dir, saved, src = _record_backup(tmp_path)
    indexes = [i for i, n in enumerate(saved) if n.startswith("index/")]
    assert len(indexes) >= 2, "the backup wrote no index checkpoint before its end"
    keep = indexes[0] + 1  # power lost right after the first checkpoint
    state = _state(repo_dir, saved, keep, tmp_path / "state", torn=True)
    repo = Repository.open(LocalBackend(state), PASSWORD)
    repo.load_index()
    checkpointed = len(repo.index)
    assert checkpointed > 0
    result = Archiver(repo, SystemClock()).backup(BackupRequest(paths=[str(src)], client="pc"))
    total_blobs = checkpointed + result.snapshot.summary.blobs_new
    assert result.snapshot.summary.blobs_new < total_blobs
    assert Checker(Repository.open(LocalBackend(state), PASSWORD)).check(read_data=True).ok
