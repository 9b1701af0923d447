"""R3: damage is always detected, never restored silently.

One bit is flipped at a random offset of one object (a data pack, a tree pack, an index
file, a snapshot, the key file, the config) of a small repository. Each time:

* ``check --read-data`` exits 13 and names the damaged object, except that a key file
  that no longer opens with the password makes every command exit 12 (it is the only
  key, so the repository cannot be opened at all);
* restoring each snapshot never writes a wrong byte: every file is either identical to
  the original or absent and named in an error, and the exit code is 13 exactly when
  something was left out (0 when the damage touched nothing the snapshot needs).
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

from strongroom.backend import LocalBackend
from strongroom.errors import WrongPasswordError
from strongroom.repository import TREE, Repository
from tests.conftest import PASSWORD
from tests.reliability.conftest import Template
from tests.reliability.helpers import (
    SEED,
    assert_restore_safe,
    check,
    evict,
    flip_bit,
    repo_objects,
    restore,
    soak_count,
    soak_only,
)

KINDS = ("data-pack", "tree-pack", "index", "snapshot", "key", "config")


def _opens(repo: Path) -> bool:
    try:
        Repository.open(LocalBackend(repo), PASSWORD.encode())
    except WrongPasswordError:
        return False
    return True


def objects_by_kind(repo: Path) -> dict[str, list[Path]]:
    """The repository's objects, with packs split into those holding trees and the rest."""
    objects = repo_objects(repo)
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    r.load_index()
    tree_packs = {
        pack
        for pack, entries in r.index.by_pack().items()
        if any(loc.type == TREE for _, loc in entries)
    }
    result = {
        "data-pack": [p for p in objects["pack"] if p.name not in tree_packs],
        "tree-pack": [p for p in objects["pack"] if p.name in tree_packs],
        "index": objects["index"],
        "snapshot": objects["snapshot"],
        "key": objects["key"],
        "config": objects["config"],
    }
    assert all(result.values()), {k: len(v) for k, v in result.items()}
    return result


def damage_detected(repo: Path, kind: str, path: Path, where: str) -> int:
    """Run check on a damaged repository; assert it exits as it must. Returns the code."""
    expected = 13
    if kind == "key" and not _opens(repo):
        expected = 12
    result, doc = check(repo)
    assert result.code == expected, (
        f"{where}: check --read-data exit {result.code}, expected {expected}: {doc}"
    )
    if expected == 13:
        if kind == "config":
            assert "config" in doc.get("message", ""), doc
        else:
            noun = {"data-pack": "pack", "tree-pack": "pack"}.get(kind, kind)
            named = f"{noun} {path.name[:8]}"
            assert any(named in e for e in doc["errors"]), (
                f"{where}: check does not name the damaged {named}: {doc['errors'][:10]}"
            )
    return expected


def restores_nothing_wrong(
    repo: Path,
    template: Template,
    kind: str,
    path: Path,
    check_code: int,
    scratch: Path,
    snapshots: list[str] | None = None,
) -> int:
    """Restore the snapshots (all by default); returns how many files were left out.
    The repository is read from the disk, as a restore of old backups reads it."""
    for obj in repo.rglob("*"):
        if obj.is_file():
            evict(obj)
    left_out = 0
    for sid in snapshots or list(template.snapshots):
        expected = template.snapshots[sid]
        target = scratch / f"restore-{sid[:8]}"
        result = restore(repo, sid, target)
        if check_code == 12:
            assert result.code == 12, (result.code, result.stderr[-2000:])
            assert not target.exists() or not any(target.iterdir())
        elif kind == "config" or (kind == "snapshot" and path.name == sid):
            left_out += len(assert_restore_safe(result, target, template.src, expected, whole=True))
        else:
            left_out += len(assert_restore_safe(result, target, template.src, expected))
        if target.exists():
            shutil.rmtree(target)
    return left_out


def flip_loop(repo: Path, template: Template, flips: int, seed: int, scratch: Path) -> Counter[str]:
    rng = random.Random(seed)
    objects = objects_by_kind(repo)
    stats: Counter[str] = Counter()
    for n in range(flips):
        kind = KINDS[n % len(KINDS)] if n < len(KINDS) else rng.choice(KINDS)
        path = rng.choice(objects[kind])
        offset = rng.randrange(path.stat().st_size)
        bit = rng.randrange(8)
        where = (
            f"flip #{n} (seed {seed}): bit {bit} of byte {offset} of {kind} "
            f"{path.relative_to(repo)}"
        )
        flip_bit(path, offset, bit)
        try:
            code = damage_detected(repo, kind, path, where)
            # One snapshot per flip, alternating, keeps the loop fast; both are covered.
            sid = sorted(template.snapshots)[n % 2]
            left_out = restores_nothing_wrong(repo, template, kind, path, code, scratch, [sid])
        finally:
            flip_bit(path, offset, bit)
        stats[f"{kind}: exit {code}"] += 1
        stats["files left out (named)"] += left_out
    return stats


def test_single_bit_flips_are_detected_and_never_restored(
    small_repo: Path, small_repo_template: Template, tmp_path: Path
) -> None:
    stats = flip_loop(small_repo, small_repo_template, 200, SEED, tmp_path / "scratch")
    # Sanity of the sample itself: every kind was hit, and some damage cost files.
    assert all(any(k.startswith(kind) for k in stats) for kind in KINDS), stats
    assert stats["files left out (named)"] > 0, stats


@soak_only
def test_single_bit_flips_soak(
    small_repo: Path, small_repo_template: Template, tmp_path: Path
) -> None:
    flips = soak_count("flips", 5000)
    stats = flip_loop(small_repo, small_repo_template, flips, SEED, tmp_path / "scratch")
    print(f"R3 soak: {dict(stats)} (seed {SEED})")
