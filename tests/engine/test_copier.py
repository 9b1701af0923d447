"""The copier against a target whose storage damages a pack: the pack is never indexed,
and a repository object kept for later copies (as the director keeps one per
repository) never deduplicates against it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.backend.faults import FaultyBackend
from strongroom.engine.copier import Copier, TargetDamaged
from strongroom.repository import TEST_KDF, Repository
from tests.conftest import PASSWORD, cli

TARGET_PASSWORD = b"the vault's own password"


def _source(tmp_path: Path) -> tuple[Repository, Path]:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for i in range(4):
        (src / f"f{i}").write_bytes(rng.randbytes(200_000))
    repo = tmp_path / "source"
    assert cli("--repo", str(repo), "init").code == 0
    assert cli("--repo", str(repo), "backup", "--client", "web", str(src)).code == 0
    source = Repository.open(LocalBackend(repo), PASSWORD.encode())
    source.load_index()
    return source, src


def test_a_pack_that_does_not_read_back_intact_is_never_indexed_nor_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, src = _source(tmp_path)
    (snapshot,) = source.snapshots()
    path = tmp_path / "vault"
    damaged: list[str] = []

    def damage_the_first_pack(name: str) -> None:
        if name.startswith("data/") and not damaged:
            damaged.append(name)
            stored = bytearray((path / name).read_bytes())
            stored[len(stored) // 2] ^= 0x40
            (path / name).write_bytes(bytes(stored))

    backend = FaultyBackend(LocalBackend(path)).on_save(damage_the_first_pack)
    Repository.init(backend, TARGET_PASSWORD, kdf=TEST_KDF, created="", hostname="", username="")
    target = Repository.open(backend, TARGET_PASSWORD)
    target.load_index()

    with pytest.raises(TargetDamaged):
        Copier(source, target).copy([snapshot])

    assert damaged and target.snapshot_ids() == []
    pack_id = damaged[0].rsplit("/", 1)[-1]
    named = {p for name in (i.name for i in backend.list("index/"))
             for p, _ in target.read_index_file(name)}  # fmt: skip
    assert pack_id not in named

    # The same repository object copies again: it stores that data anew.
    result = Copier(source, target).copy([snapshot])
    assert len(result.copied) == 1 and result.packs_verified >= 1
    monkeypatch.setenv("STRONGROOM_PASSWORD", TARGET_PASSWORD.decode())
    r = cli("--repo", str(path), "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr
    r = cli("--repo", str(path), "restore", "latest", "--target", str(tmp_path / "out"))
    assert r.code == 0, r.stderr
    for f in src.iterdir():
        assert (tmp_path / "out" / src.relative_to("/") / f.name).read_bytes() == f.read_bytes()
