"""R12: a full disk loses nothing.

The repository (or the cache) lives on a small tmpfs that fills up during a backup:
the backup fails with a clear error (exit 1, "no space" or "full", never "internal
error"); no object is left under its final name with contents that do not hash to that
name; and once space is freed, ``check --read-data`` passes and a backup succeeds.

Needs root for ``mount``; skipped otherwise unless CI is set (then it must run).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import Result, cli
from tests.reliability.helpers import (
    SEED,
    assert_check_ok,
    assert_restored_exactly,
    backup,
    cli_json,
    content_addressed_mismatches,
    manifest,
    restore,
    write_tree,
)


def _assert_clear_full_error(result: Result, what: str) -> None:
    text = (result.stdout + result.stderr).lower()
    assert result.code == 1, f"{what}: exit {result.code}, expected 1: {result.stderr[-2000:]}"
    assert "no space" in text or "full" in text, f"{what}: unclear error: {result.stderr}"
    assert "internal error" not in text and "traceback" not in text, (
        f"{what}: a full disk is reported as a bug: {result.stderr[-2000:]}"
    )


def _fill(mount: Path, leave: int) -> Path:
    """Fill the filesystem until only ``leave`` bytes are free."""
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    filler = mount / "filler"
    with open(filler, "ab") as f:
        f.write(b"\xaa" * max(0, free - leave))
    return filler


def _restore_latest(repo: Path, src: Path, target: Path) -> None:
    r = restore(repo, "latest", target)
    assert r.code == 0, r.stderr[-2000:]
    assert_restored_exactly(target, src, manifest(src))
    shutil.rmtree(target)


def test_backup_bigger_than_the_disk(tmpfs_factory: Any, tmp_path: Path) -> None:
    mount = tmpfs_factory.make("disk", "20m")
    repo = mount / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    src = tmp_path / "src"
    write_tree(src, random.Random(SEED), files=50, big=10, big_size=4 << 20)  # ~40 MB

    result = cli("--repo", str(repo), "backup", "--client", "full", str(src))
    _assert_clear_full_error(result, "backup onto a full disk")
    assert content_addressed_mismatches(repo) == []
    assert not (repo / "snapshots").exists() or not any((repo / "snapshots").iterdir())

    tmpfs_factory.resize(mount, "200m")
    assert_check_ok(repo, "after the disk filled up and was enlarged")
    backup(repo, src, "full")
    assert_check_ok(repo, "after the backup that followed")
    _restore_latest(repo, src, tmp_path / "target")


def test_disk_full_at_every_phase_of_a_backup(tmpfs_factory: Any, tmp_path: Path) -> None:
    """Leave a little more room each round, so the disk fills while writing a data pack,
    the tree pack, the index, the snapshot: each time the failure is clean."""
    mount = tmpfs_factory.make("disk", "20m")
    repo = mount / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    rng = random.Random(SEED)
    src = tmp_path / "src"
    write_tree(src, rng, files=30)
    backup(repo, src, "phases")
    outcomes = []
    failed_at: set[str] = set()  # what was being saved when the disk was full
    # 300 kB of new data: coarse steps up to the data pack's size, then one 4 KiB page
    # at a time through the tree pack, the index, the snapshot and the lock.
    sweep = [*range(0, 280 * 1024, 40 * 1024), *range(280 * 1024, 364 * 1024, 4096)]
    for round_, leave in enumerate(sweep):
        new = src / "new"
        if new.exists():
            shutil.rmtree(new)
        new.mkdir()
        (new / f"data{round_}").write_bytes(rng.randbytes(300_000))
        filler = _fill(mount, leave)
        result = cli("--repo", str(repo), "backup", "--client", "phases", str(src))
        if result.code == 0:
            outcomes.append("ok")
        else:
            _assert_clear_full_error(result, f"round {round_} with {leave} bytes free")
            outcomes.append("full")
            line = next(ln for ln in result.stderr.splitlines() if "error:" in ln)
            failed_at.update(k for k in ("data/", "index/", "snapshots/") if k in line)
        assert content_addressed_mismatches(repo) == [], f"round {round_} ({leave} bytes free)"
        filler.unlink()
        assert_check_ok(repo, f"after round {round_} ({leave} bytes free)")
        if result.code == 0:
            _restore_latest(repo, src, tmp_path / "target")
    assert "full" in outcomes and "ok" in outcomes, outcomes
    assert failed_at == {"data/", "index/", "snapshots/"}, failed_at
    backup(repo, src, "phases")
    assert_check_ok(repo, "at the end")
    _restore_latest(repo, src, tmp_path / "target")


def test_full_cache_disk_is_a_clear_error_or_harmless(
    tmpfs_factory: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The files cache is only an optimisation: a full disk under it must not turn into
    an internal error, and must leave no partial cache file behind."""
    cache = tmpfs_factory.make("cache", "1m")
    monkeypatch.setenv("STRONGROOM_CACHE_DIR", str(cache / "strongroom"))
    (cache / "strongroom").mkdir()
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    src = tmp_path / "src"
    write_tree(src, random.Random(SEED), files=400, sizes=(10, 100))
    filler = _fill(cache, 0)

    result, doc = cli_json("--repo", str(repo), "backup", "--client", "c", str(src))
    if result.code == 0:
        assert doc["type"] == "summary" and doc["snapshot_id"]
    else:
        _assert_clear_full_error(result, "backup with a full cache disk")
    partial = [p.name for p in (cache / "strongroom").rglob("*") if p.is_file()]
    assert partial == [], f"partial cache files left on the full disk: {partial}"
    assert_check_ok(repo, "after a backup with a full cache disk")

    filler.unlink()
    backup(repo, src, "c")
    _restore_latest(repo, src, tmp_path / "target")
