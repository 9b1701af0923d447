"""A director records each snapshot in the catalog as its changes against the last
one of its lineage (jobs/run.py, ``_index_snapshot``), reading only the subtrees that
changed (engine/walk.py, ``changes``). Both must give exactly what recording every
entry gives."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from strongroom.backend import LocalBackend
from strongroom.catalog import Catalog
from strongroom.engine.walk import changes, walk
from strongroom.repository import Repository
from tests.conftest import PASSWORD, cli, repo_with_password_file


def _mutate(src: Path, rng: random.Random, step: int) -> None:
    """Add, grow, remove files; turn a directory into a file and back; empty a tree."""
    for n in range(rng.randint(2, 6)):
        d = src / f"d{rng.randrange(4)}" / f"e{rng.randrange(3)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{step}-{n}").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for path in rng.sample(files, min(len(files), 3)):
        roll = rng.random()
        if roll < 0.4:
            path.unlink()
        elif roll < 0.8:
            with path.open("ab") as f:
                f.write(b"more")
        else:
            os.utime(path, ns=(10**18 + step, 10**18 + step))
    flip = src / "flip"
    if flip.is_dir():
        shutil.rmtree(flip)
        flip.write_text(str(step))
    else:
        flip.unlink(missing_ok=True)
        (flip / "inner").mkdir(parents=True)
        (flip / "inner" / "x").write_text(str(step))
    if step % 3 == 2:
        victim = src / f"d{rng.randrange(4)}"
        if victim.exists():
            shutil.rmtree(victim)


def test_changes_between_trees_match_two_full_walks(tmp_path: Path) -> None:
    repo_path = repo_with_password_file(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    snapshots = []
    for step in range(8):
        _mutate(src, rng, step)
        r = cli("--json", "--repo", str(repo_path), "backup", "--client", "c", str(src))
        assert r.code == 0, r.stderr
        snapshots.append(json.loads(r.stdout.splitlines()[-1])["snapshot_id"])
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    repo.load_index()
    trees = [repo.load_snapshot(s).tree for s in snapshots]
    for old, new in [(None, trees[0]), *itertools.pairwise(trees), (trees[0], trees[-1])]:
        before = {} if old is None else {p: n for p, n in walk(repo, old)}
        after = {p: n for p, n in walk(repo, new)}
        expected = sorted(
            p
            for p, n in after.items()
            if p not in before
            or (before[p].type, before[p].size, before[p].mtime_ns) != (n.type, n.size, n.mtime_ns)
        )
        changed, removed = changes(repo, old, new)
        assert sorted(p for p, _ in changed) == expected
        assert all(after[p] == n for p, n in changed)
        assert sorted(removed) == sorted(p for p in before if p not in after)
    assert changes(repo, trees[-1], trees[-1]) == ([], [])


def test_runs_recorded_as_changes_find_what_a_rebuild_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded: list[bool] = []  # per record_snapshot call: given as changes?
    record = Catalog.record_snapshot

    def counting(self: Catalog, *args: Any, **kwargs: Any) -> bool:
        recorded.append(len(args) > 2 and args[2] is not None)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(Catalog, "record_snapshot", counting)
    repo_with_password_file(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\npassword_file = "{tmp_path}/pass"\n\n'
        f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n'
        f'[defaults]\nrepository = "main"\n\n'
        f'[clients.c]\ntransport = "local"\nsources = ["{src}"]\n'
    )
    rng = random.Random(12)

    def found() -> list[tuple[str, str, str]]:
        r = cli("--json", "--config", str(config), "find", "*")
        assert r.code == 0, r.stderr
        return sorted((h["snapshot"], h["path"], str(h["size"])) for h in json.loads(r.stdout))

    for step in range(6):
        _mutate(src, rng, step)
        r = cli("--config", str(config), "run", "c")
        assert r.code == 0, r.stderr
        if step == 3:  # a forgotten last snapshot: the next run records in full
            r = cli("--config", str(config), "--repo", "main", "forget", "latest", "--client", "c")
            assert r.code == 0, r.stderr
    incremental = found()
    assert len({sid for sid, _, _ in incremental}) == 5
    # The first run and the one after the forget in full, the others as changes.
    assert recorded == [False, True, True, True, False, True]
    r = cli("--config", str(config), "catalog", "rebuild")
    assert r.code == 0, r.stderr
    assert found() == incremental
