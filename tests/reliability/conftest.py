"""Fixtures of the reliability suite: a small multi-pack repository to damage, copied
fresh for every test, and a small tmpfs for full-disk tests."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import strongroom.repository.repository as repository_module
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import Manifest, backup, copy_repo, manifest, write_tree

# Packs of 32 KiB: the small repository has dozens of packs, so damage to one pack
# leaves others intact and the tests can tell the two apart.
SMALL_PACK = 32 * 1024


@dataclass(frozen=True)
class Template:
    repo: Path
    src: Path
    # snapshot id -> what the source looked like when it was taken
    snapshots: dict[str, Manifest]


@pytest.fixture(scope="session")
def small_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Two snapshots of a ~2 MB tree in ~50 packs; never modified (tests take copies)."""
    base = tmp_path_factory.mktemp("small-template")
    src = base / "src"
    rng = random.Random(7)
    write_tree(src, rng, files=40, sizes=(0, 1, 100, 3_000, 20_000, 60_000))
    (src / "d0" / "same-a").write_bytes(b"duplicate content\n" * 500)
    (src / "d1" / "same-b").write_bytes(b"duplicate content\n" * 500)
    (src / "big").write_bytes(rng.randbytes(700_000))
    (src / "link").symlink_to("d0/same-a")
    (src / "empty-dir").mkdir()
    repo = base / "repo"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("STRONGROOM_"):
                mp.delenv(name)
        mp.setenv("STRONGROOM_INSECURE_TEST_KDF", "1")
        mp.setenv("STRONGROOM_PASSWORD", PASSWORD)
        mp.setenv("STRONGROOM_CACHE_DIR", str(base / "cache"))
        mp.setattr(repository_module, "PACK_TARGET_SIZE", SMALL_PACK)
        assert cli("--repo", str(repo), "init").code == 0
        snapshots = {}
        first = backup(repo, src, "alpha")
        snapshots[first["snapshot_id"]] = manifest(src)
        (src / "d2" / "added").write_bytes(rng.randbytes(30_000))
        (src / "d0" / "e0" / "f0").write_bytes(b"changed\n" * 3000)
        second = backup(repo, src, "beta")
        snapshots[second["snapshot_id"]] = manifest(src)
    return Template(repo, src, snapshots)


@pytest.fixture
def small_repo(small_repo_template: Template, tmp_path: Path) -> Path:
    """A private copy of the small repository."""
    return copy_repo(small_repo_template.repo, tmp_path / "small-repo")


def _mount_allowed() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (under CI this test must run)")


@pytest.fixture
def tmpfs_factory(tmp_path: Path) -> Iterator[object]:
    """``make(name, size)`` mounts a tmpfs of ``size`` (e.g. "20m"); all are unmounted
    at teardown. ``resize(path, size)`` remounts one bigger or smaller."""
    _mount_allowed()
    mounted: list[Path] = []

    class Factory:
        def make(self, name: str, size: str) -> Path:
            path = tmp_path / name
            path.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                check=True,
                capture_output=True,
            )
            mounted.append(path)
            return path

        def resize(self, path: Path, size: str) -> None:
            subprocess.run(
                ["mount", "-o", f"remount,size={size}", str(path)],
                check=True,
                capture_output=True,
            )

    yield Factory()
    for path in reversed(mounted):
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
