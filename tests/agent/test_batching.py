"""Protocol 1.3: the agent asks about many chunks per round trip, over a real sshd.

An unchanged re-backup asks one ``known_many`` per directory (not one ``known`` per
chunk), new chunks and trees are claimed a group at a time and sent several to a
request, and an agent talking to a director
that predates 1.3 falls back to one id per request with the same result.
"""

from __future__ import annotations

import os
import random
import shlex
from collections import Counter
from pathlib import Path

import pytest

from strongroom.agent import director
from strongroom.agent.director import AgentBackup, AgentSession
from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.repository import Repository
from tests.agent.conftest import Sshd
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import assert_restored_exactly, manifest

DIRS = 12
FILES = 15


def _tree(root: Path) -> None:
    rng = random.Random(13)
    for d in range(DIRS):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(FILES):
            (sub / f"f{f:02}").write_bytes(rng.randbytes(rng.randrange(100, 20_000)))
    (root / "d00" / "big.bin").write_bytes(rng.randbytes(6_000_000))  # several chunks
    old = 1_600_000_000 * 10**9  # files the cache can trust (not written just now)
    for path in root.rglob("*"):
        os.utime(path, ns=(old, old))


def _backup(repo_path: Path, sshd: Sshd, src: Path) -> tuple[str, Counter[str]]:
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    repo.load_index()
    command = [*sshd.ssh_command(), "-p", str(sshd.port), "127.0.0.1",
               " ".join(shlex.quote(w) for w in sshd.agent_command())]  # fmt: skip
    result = AgentSession(command, repo, SystemClock()).backup(
        AgentBackup(paths=[str(src)], client="web01", job="default")
    )
    return result.snapshot.id, result.requests


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    src = tmp_path / "src"
    _tree(src)
    return repo, src


def _restores(repo: Path, snapshot_id: str, src: Path, target: Path) -> None:
    r = cli("--repo", str(repo), "restore", snapshot_id, "--target", str(target))
    assert r.code == 0, r.stderr
    assert_restored_exactly(target, src, manifest(src))


def test_chunks_are_asked_about_in_batches(
    setup: tuple[Path, Path], sshd: Sshd, tmp_path: Path
) -> None:
    repo, src = setup
    first, asked = _backup(repo, sshd, src)
    # New data: claimed a group at a time, and so are the trees, and sent several blobs
    # (up to 8 MiB) to a request; nothing one by one.
    assert asked["known"] == asked["known_many"] == asked["claim"] == asked["store"] == 0
    assert 2 <= asked["claim_many"] < DIRS * FILES // 4, asked
    assert 1 <= asked["store_many"] <= 4, asked
    # The agent counts what the director stored without being told: exactly.
    stored = Repository.open(LocalBackend(repo), PASSWORD.encode())
    stored.load_index()
    snap = next(s for s in stored.snapshots() if s.id == first)
    in_packs = sum(loc.length for blobs in stored.index.by_pack().values() for _, loc in blobs)
    assert snap.summary.bytes_stored == in_packs
    _restores(repo, first, src, tmp_path / "t1")

    second, asked = _backup(repo, sshd, src)
    # Unchanged: one known_many per directory with files, nothing read, one claim_many
    # for all the trees; only those of the source's parents (whose times the restore
    # above changed) are new.
    assert asked["known"] == asked["claim"] == 0, asked
    assert asked["known_many"] == DIRS, asked
    assert asked["claim_many"] == asked["store_many"] == 1, asked
    _restores(repo, second, src, tmp_path / "t2")


def test_an_older_director_is_asked_one_id_at_a_time(
    setup: tuple[Path, Path], sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, src = setup
    monkeypatch.setattr(director, "MINOR", 2)  # this director announces 1.2
    _, asked = _backup(repo, sshd, src)
    assert asked["claim_many"] == asked["known_many"] == asked["store_many"] == 0, asked
    assert asked["claim"] > DIRS * FILES, asked  # every chunk, one by one
    assert asked["store"] > DIRS * FILES, asked
    second, asked = _backup(repo, sshd, src)
    assert asked["known_many"] == 0 and asked["known"] >= DIRS * FILES, asked
    assert asked["store"] <= len(src.parts), asked
    _restores(repo, second, src, tmp_path / "t")
