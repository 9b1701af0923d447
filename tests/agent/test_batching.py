"""Protocol 1.3: the agent asks about many chunks per round trip, over a real sshd.

An unchanged re-backup asks one ``known_many`` per LOOKUP_BATCH unchanged files, from
as many directories as it takes (not one ``known`` per chunk, nor one per directory);
new chunks and trees are claimed a group at a time and sent several to a request; a
restore through the agent fetches chunks several to a request; and an agent talking
to a director that predates 1.3 falls back to one id per request with the same result.
"""

from __future__ import annotations

import os
import random
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from strongroom.agent import director
from strongroom.agent.director import AgentBackup, AgentRestore, AgentSession
from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.engine.walk import walk
from strongroom.repository import Repository
from tests.agent.conftest import Sshd
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import (
    age_tree,
    assert_restored_exactly,
    dirs_of_files,
    manifest,
    restored_root,
)

DIRS = 12
FILES = 15


def _tree(root: Path) -> None:
    rng = random.Random(13)
    dirs_of_files(root, DIRS, FILES, rng, 20_000)
    (root / "d00" / "big.bin").write_bytes(rng.randbytes(6_000_000))  # several chunks
    age_tree(root)


def _open(repo_path: Path) -> Repository:
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    repo.load_index()
    return repo


def _backup(repo_path: Path, sshd: Sshd, src: Path) -> tuple[str, Counter[str]]:
    repo = _open(repo_path)
    result = AgentSession(_command(sshd), repo, SystemClock()).backup(
        AgentBackup(paths=[str(src)], client="web01", job="default")
    )
    return result.snapshot.id, result.requests


def _restore_through_agent(
    repo_path: Path, sshd: Sshd, snapshot_id: str, target: Path
) -> dict[str, Any]:
    repo = _open(repo_path)
    snap = repo.load_snapshot(snapshot_id)
    return AgentSession(_command(sshd), repo, SystemClock()).restore(
        AgentRestore(tree=snap.tree, target=str(target))
    )


def _command(sshd: Sshd) -> list[str]:
    return [*sshd.ssh_command(), "-p", str(sshd.port), "127.0.0.1",
            " ".join(shlex.quote(w) for w in sshd.agent_command())]  # fmt: skip


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
    stored = _open(repo)
    snap = stored.load_snapshot(first)
    in_packs = sum(loc.length for blobs in stored.index.by_pack().values() for _, loc in blobs)
    assert snap.summary.bytes_stored == in_packs
    _restores(repo, first, src, tmp_path / "t1")

    second, asked = _backup(repo, sshd, src)
    # Unchanged: one known_many for the 181 files of all 12 directories, nothing read,
    # one claim_many for all the trees; only those of the source's parents (whose times
    # the restore above changed) are new.
    assert asked["known"] == asked["claim"] == 0, asked
    assert asked["known_many"] == 1, asked
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
    done = _restore_through_agent(repo, sshd, second, tmp_path / "t2")
    assert done["requests"]["blobs"] == 0 and done["requests"]["blob"] > DIRS * FILES
    assert_restored_exactly(tmp_path / "t2", src, manifest(src))


def test_a_restore_through_the_agent_fetches_blobs_in_batches(
    setup: tuple[Path, Path], sshd: Sshd, tmp_path: Path
) -> None:
    repo, src = setup
    snapshot_id, _ = _backup(repo, sshd, src)
    done = _restore_through_agent(repo, sshd, snapshot_id, tmp_path / "t")
    assert done["errors"] == [] and done["files"] == DIRS * FILES + 1, done
    asked = done["requests"]
    assert asked["blob"] == 0, asked
    assert 1 <= asked["blobs"] <= 12, asked  # ~8 MiB in jobs of up to 16 MiB
    assert_restored_exactly(tmp_path / "t", src, manifest(src))


def test_a_restore_through_the_agent_names_only_the_damaged_files(
    setup: tuple[Path, Path], sshd: Sshd, tmp_path: Path
) -> None:
    repo, src = setup
    snapshot_id, _ = _backup(repo, sshd, src)
    # Flip a byte inside one chunk of big.bin: the batch that carries it says why.
    stored = _open(repo)
    snap = stored.load_snapshot(snapshot_id)
    files = [(path, node) for path, node in walk(stored, snap.tree) if node.content]
    big = next(node for path, node in files if path.endswith(b"/d00/big.bin"))
    victim = stored.lookup(big.content[1])
    assert victim is not None
    [pack] = [p for p in (repo / "data").rglob("*") if p.name.startswith(victim.pack_id)]
    damaged = bytearray(pack.read_bytes())
    damaged[victim.offset + 40] ^= 1
    pack.write_bytes(damaged)
    hurt = {path for path, node in files if big.content[1] in node.content}
    done = _restore_through_agent(repo, sshd, snapshot_id, tmp_path / "t")
    named = {e.split(":")[0] for e in done["errors"]}
    assert named == {os.fsdecode(p) for p in hurt}, done["errors"]
    assert done["files"] == DIRS * FILES + 1 - len(hurt)
    expected = manifest(src)
    got = manifest(restored_root(tmp_path / "t", src))
    for rel, entry in got.items():
        assert expected[rel] == entry, f"{rel} restored with wrong content"
    assert len(got) == len(expected) - len(hurt)
