"""R5: missing data is named, and healed by the next backup.

Packs are deleted (one, 10% of them, every pack holding trees). ``check`` must exit 13
and name exactly the snapshots and paths that lost data; a new backup of the same,
unchanged sources must re-upload what is missing (even though the files cache says the
files are unchanged), after which every snapshot restores and ``check --read-data``
passes again.

A snapshot records the metadata of every directory above the backed-up path, so an old
snapshot's trees can only be rebuilt while those directories are unchanged. The sources
therefore live in a directory nothing else touches: directly under ``/`` when running as
root, else under the test's own directory (whose parents pytest leaves alone during a test).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import strongroom.repository.repository as repository_module
from strongroom.backend import LocalBackend
from strongroom.engine.walk import load_tree
from strongroom.repository import TREE, Repository
from strongroom.repository.tree import DIR, FILE
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import (
    SEED,
    assert_check_ok,
    assert_restored_exactly,
    backup,
    cli_json,
    manifest,
    restore,
    write_tree,
)

PACK_SIZE = 128 * 1024


@pytest.fixture
def stable_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() == 0:
        path = Path("/") / f"strongroom-r5-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path)
    else:
        path = tmp_path / "stable"
        path.mkdir()
        yield path


def _expected_damage(repo_path: Path, lost_packs: set[str]) -> dict[str, set[tuple[str, bool]]]:
    """What check must report: snapshot id -> {(path, is a lost directory listing)}."""
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    repo.load_index()

    def lost(bid: bytes) -> bool:
        loc = repo.lookup(bid)
        return loc is None or loc.pack_id in lost_packs

    def walk(tree_id: bytes, prefix: str, out: set[tuple[str, bool]]) -> None:
        if lost(tree_id):
            out.add((prefix or "/", True))
            return
        for node in load_tree(repo, tree_id):
            path = f"{prefix}/{node.name.decode()}"
            if node.type == FILE and any(isinstance(c, bytes) and lost(c) for c in node.content):
                out.add((path, False))
            elif node.type == DIR and node.subtree is not None:
                walk(node.subtree, path, out)

    result = {}
    for snap in repo.snapshots():
        damage: set[tuple[str, bool]] = set()
        walk(snap.tree, "", damage)
        if damage:
            result[snap.id] = damage
    return result


def _reported(affected: dict[str, list[str]]) -> dict[str, set[tuple[str, bool]]]:
    result = {}
    for sid, paths in affected.items():
        result[sid] = {(p.split(" (directory", 1)[0], " (directory" in p) for p in paths}
    return result


def _packs(repo_path: Path) -> tuple[list[str], set[str]]:
    """All pack ids, and those holding at least one tree blob."""
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    repo.load_index()
    groups = repo.index.by_pack()
    trees = {p for p, entries in groups.items() if any(loc.type == TREE for _, loc in entries)}
    return sorted(groups), trees


@pytest.mark.parametrize("lose", ["one-pack", "ten-percent", "all-tree-packs"])
def test_missing_packs_are_named_and_healed(
    stable_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lose: str
) -> None:
    monkeypatch.setattr(repository_module, "PACK_TARGET_SIZE", PACK_SIZE)
    rng = random.Random(f"{SEED}-{lose}")
    sources = {"a": stable_dir / "a", "b": stable_dir / "b"}
    write_tree(
        sources["a"],
        rng,
        files=60,
        sizes=(5, 3_000, 50_000, 200_000),
        big=2,
        big_size=1 << 20,
        prefix="a",
    )
    write_tree(sources["b"], rng, files=30, sizes=(5, 3_000, 90_000), prefix="b")
    manifests = {name: manifest(src) for name, src in sources.items()}
    # Every directory the test needs exists before the first backup, so nothing above
    # the sources changes from here on.
    (tmp_path / "cache").mkdir(exist_ok=True)
    targets = tmp_path / "targets"
    targets.mkdir()
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0

    taken: dict[str, str] = {}  # snapshot id -> source name
    for name in ("a", "b", "a"):
        taken[backup(repo, sources[name], name)["snapshot_id"]] = name
    assert_check_ok(repo, "before any pack was deleted")

    packs, tree_packs = _packs(repo)
    if lose == "one-pack":
        lost = {rng.choice(sorted(set(packs) - tree_packs))}
    elif lose == "ten-percent":
        lost = set(rng.sample(packs, math.ceil(len(packs) / 10)))
    else:
        lost = set(tree_packs)
    assert lost and len(packs) >= 10, (len(packs), lost)
    expected = _expected_damage(repo, lost)
    assert expected, "the deleted packs held nothing any snapshot needs"
    for pack in lost:
        (repo / "data" / pack[:2] / pack).unlink()

    for args in ((), ("--read-data",)):
        result, doc = cli_json("--repo", str(repo), "check", *args)
        assert result.code == 13, doc
        assert _reported(doc["affected"]) == expected, (
            f"check names the wrong snapshots or paths:\nreported {doc['affected']}\n"
            f"expected {expected}"
        )
    plain = cli("--repo", str(repo), "check")
    assert plain.code == 13
    for sid in expected:
        assert f"snapshot {sid[:8]}" in plain.stderr, plain.stderr[-3000:]
    for sid in set(taken) - set(expected):
        assert f"snapshot {sid[:8]}" not in plain.stderr, plain.stderr[-3000:]

    # Heal: back up the same, unchanged sources again.
    healed = {name: backup(repo, src, name) for name, src in sources.items()}
    assert sum(d["bytes_new"] for d in healed.values()) > 0, "nothing was re-uploaded"
    for sid, doc in healed.items():
        taken[doc["snapshot_id"]] = sid
    for sid, name in taken.items():
        target = targets / sid[:8]
        r = restore(repo, sid, target)
        assert r.code == 0, f"snapshot {sid[:8]} still damaged after healing: {r.stderr[-2000:]}"
        assert_restored_exactly(target, sources[name], manifests[name])
        shutil.rmtree(target)
    assert_check_ok(repo, f"after the healing backup ({lose} deleted)")
