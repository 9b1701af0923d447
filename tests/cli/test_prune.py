"""`strongroom prune`: options, output, exit codes, and what it does to a repository."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.repository import Repository
from strongroom.repository.gc import GC_PURPOSE
from strongroom.repository.locks import RepositoryLock
from tests.conftest import PASSWORD, Result, cli
from tests.reliability.helpers import assert_restored_exactly, manifest, write_tree


def in_repo(repo: Path, *args: str) -> Result:
    return cli("--repo", str(repo), *args)


def summary(r: Result) -> dict[str, object]:
    doc = json.loads(r.stdout.splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def snapshot_of(repo: Path, src: Path, client: str) -> str:
    r = in_repo(repo, "--json", "backup", "--client", client, str(src))
    assert r.code == 0, r.stderr
    return str(summary(r)["snapshot_id"])


def forget(repo: Path, snapshot_id: str) -> None:
    """What `forget` does to the repository (that command is not under test here)."""
    Repository.open(LocalBackend(repo), PASSWORD.encode()).remove_snapshot(snapshot_id)


def stored(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def objects(repo: Path) -> dict[str, bytes]:
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and not p.relative_to(repo).as_posix().startswith("locks/")
    }


@pytest.fixture
def two_snapshots(repo_path: Path, tmp_path: Path) -> tuple[Path, str, Path, str]:
    rng = random.Random(5)
    old_src, kept_src = tmp_path / "old", tmp_path / "kept"
    write_tree(old_src, rng, files=10, sizes=(2_000, 60_000), prefix="o")
    write_tree(kept_src, rng, files=10, sizes=(2_000, 60_000), prefix="k")
    old = snapshot_of(repo_path, old_src, "old")
    kept = snapshot_of(repo_path, kept_src, "kept")
    return repo_path, old, kept_src, kept


def test_prune_reclaims_forgotten_data(
    two_snapshots: tuple[Path, str, Path, str], tmp_path: Path
) -> None:
    repo, old, kept_src, kept = two_snapshots
    before = stored(repo)
    forget(repo, old)

    r = in_repo(repo, "--json", "prune")

    assert r.code == 0, r.stderr
    doc = summary(r)
    assert doc["type"] == "summary" and doc["exit_code"] == 0
    assert doc["mode"] == "at-once" and doc["dry_run"] is False
    assert isinstance(doc["bytes_freed"], int) and doc["bytes_freed"] > 100_000
    assert before - stored(repo) == doc["bytes_freed"]
    for key in ("packs_deleted", "packs_repacked", "candidates_marked", "packs_waiting"):
        assert isinstance(doc[key], int)
    assert in_repo(repo, "check", "--read-data").code == 0
    target = tmp_path / "target"
    assert in_repo(repo, "restore", kept, "--target", str(target)).code == 0
    assert_restored_exactly(target, kept_src, manifest(kept_src))


def test_human_output(two_snapshots: tuple[Path, str, Path, str]) -> None:
    repo, old, _, _ = two_snapshots
    forget(repo, old)
    r = in_repo(repo, "prune")
    assert r.code == 0, r.stderr
    assert "1 snapshot(s)" in r.stdout and "unused" in r.stdout
    assert "pack(s) deleted" in r.stdout and "freed" in r.stdout
    assert "reclaimed at once" in r.stdout


def test_dry_run_deletes_nothing(two_snapshots: tuple[Path, str, Path, str]) -> None:
    repo, old, _, _ = two_snapshots
    forget(repo, old)
    before = objects(repo)

    r = in_repo(repo, "--json", "prune", "--dry-run")

    assert r.code == 0, r.stderr
    doc = summary(r)
    assert doc["dry_run"] is True and doc["mode"] == "dry-run"
    assert objects(repo) == before
    assert isinstance(doc["packs_unused"], int) and doc["packs_unused"] > 0
    human = in_repo(repo, "prune", "-n")
    assert f"all {doc['packs_unused']} unused pack(s) would be deleted at once" in human.stdout


def test_beside_a_running_backup_prune_only_marks(
    two_snapshots: tuple[Path, str, Path, str],
) -> None:
    repo, old, _, _ = two_snapshots
    forget(repo, old)
    writer = RepositoryLock(
        LocalBackend(repo), SystemClock(), exclusive=False, hostname="elsewhere.example",
        purpose="backup of web01",
    ).acquire()  # fmt: skip
    try:
        before = stored(repo)
        r = in_repo(repo, "--json", "prune")
        assert r.code == 0, r.stderr
        doc = summary(r)
        # Its packs are younger than the grace period: not even marked yet, and it says so.
        assert doc["mode"] == "two-phase" and doc["packs_deleted"] == 0
        assert doc["candidates_marked"] == 0
        assert doc["packs_deferred"] == doc["packs_unused"] > 0
        assert stored(repo) == before
        human = in_repo(repo, "prune").stdout
        assert f"{doc['packs_deferred']} unused pack(s) (" in human
        assert "younger than 6h left alone" in human
    finally:
        writer.release()


def test_a_backup_left_half_done_is_reclaimed(repo_path: Path, tmp_path: Path) -> None:
    """Packs a killed backup uploaded but never indexed are garbage for prune."""
    src = tmp_path / "src"
    write_tree(src, random.Random(1), files=5, sizes=(50_000,))
    snapshot_of(repo_path, src, "c")
    orphan = repo_path / "data" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"SRP1" + os.urandom(200))
    junk = repo_path / "data" / "ab" / "not-a-pack"
    junk.write_bytes(b"left alone")

    r = in_repo(repo_path, "--json", "prune")

    assert r.code == 0 and summary(r)["packs_deleted"] == 1, r.stderr
    assert not orphan.exists() and junk.exists()
    assert in_repo(repo_path, "check", "--read-data").code == 0


def test_a_damaged_repository_is_exit_13_and_nothing_is_deleted(
    two_snapshots: tuple[Path, str, Path, str],
) -> None:
    repo, old, _, kept = two_snapshots
    forget(repo, old)
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    r.load_index()
    loc = r.lookup(r.load_snapshot(kept).tree)
    assert loc is not None
    (repo / "data" / loc.pack_id[:2] / loc.pack_id).unlink()  # the kept snapshot's trees
    before = objects(repo)

    result = in_repo(repo, "prune")

    assert result.code == 13, result.stderr
    assert "refuses to delete anything" in result.stderr
    assert objects(repo) == before


def test_another_prune_running_is_exit_11(repo_path: Path) -> None:
    other = RepositoryLock(
        LocalBackend(repo_path), SystemClock(), exclusive=False, hostname=socket.gethostname(),
        purpose=GC_PURPOSE,
    ).acquire()  # fmt: skip
    try:
        r = in_repo(repo_path, "prune")
    finally:
        other.release()
    assert r.code == 11 and "another prune is running" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grace", "10m"], "too short"),
        (["--grace", "soon"], "invalid duration"),
        (["--max-unused", "lots"], "not a percentage"),
        (["--max-unused", "150%"], "between 0% and 100%"),
    ],
)
def test_bad_options_are_usage_errors(repo_path: Path, args: list[str], message: str) -> None:
    r = in_repo(repo_path, "prune", *args)
    assert r.code == 2 and message in r.stderr, r.stderr


def test_options_are_accepted(two_snapshots: tuple[Path, str, Path, str]) -> None:
    repo, old, _, _ = two_snapshots
    forget(repo, old)
    r = in_repo(repo, "--json", "prune", "--grace", "2h", "--max-unused", "unlimited")
    assert r.code == 0 and summary(r)["packs_repacked"] == 0, r.stderr
    r = in_repo(repo, "prune", "--max-unused", "0")
    assert r.code == 0, r.stderr


def test_help_names_the_exit_codes() -> None:
    r = cli("prune", "--help")
    assert r.code == 0
    assert "--max-unused" in r.stdout and "--grace" in r.stdout and "--dry-run" in r.stdout
    assert "Exit status" in r.stdout
