"""`strongroom copy`: snapshots into another repository with other keys, idempotently."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Result, cli

TARGET_PASSWORD = "vault password, not the source's"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_of(r: Result) -> dict[str, object]:
    lines = json_lines(r.stdout)
    assert lines and lines[-1]["type"] == "summary", r.stdout + r.stderr
    return lines[-1]


def backup(repo: Path, client: str, *paths: Path) -> str:
    r = cli("--repo", str(repo), "--json", "backup", "--client", client, *map(str, paths))
    assert r.code == 0, r.stderr
    return str(summary_of(r)["snapshot_id"])


def in_target(target: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    with monkeypatch.context() as m:
        m.setenv("STRONGROOM_PASSWORD", TARGET_PASSWORD)
        return cli("--repo", str(target), *args)


def target_snapshots(target: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    r = in_target(target, "--json", "snapshots", monkeypatch=monkeypatch)
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert isinstance(doc, list)
    return doc


def copy(source: Path, target: Path, *args: str) -> Result:
    return cli("--repo", str(source), "--json", "copy", "--to", str(target), *args)


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository with its own password (so its own master key and seeds)."""
    path = tmp_path / "vault"
    with monkeypatch.context() as m:
        m.setenv("STRONGROOM_PASSWORD", TARGET_PASSWORD)
        assert cli("--repo", str(path), "init").code == 0
    monkeypatch.setenv("STRONGROOM_TO_PASSWORD", TARGET_PASSWORD)
    return path


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    """Two clients' files: several chunks each, small files, a link, a subdirectory."""
    made = {}
    for name in ("web", "db"):
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 11))
        (root / "small.txt").write_bytes(f"{name} small file\n".encode())
        (root / "sub" / "same.txt").write_bytes(b"identical on every client\n" * 100)
        os.symlink("small.txt", root / "link")
        made[name] = root
    return made


def assert_same_tree(left: Path, right: Path) -> None:
    cmp = filecmp.dircmp(left, right)
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files, cmp.report()
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    assert not mismatch and not errors
    for sub in cmp.common_dirs:
        assert_same_tree(left / sub, right / sub)


def test_copy_all_then_restore_and_check_the_target(
    repo_path: Path, target: Path, trees: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    web = backup(repo_path, "web", trees["web"])
    db = backup(repo_path, "db", trees["db"])

    r = copy(repo_path, target)
    assert r.code == 0, r.stderr
    s = summary_of(r)
    assert s["snapshots_copied"] == 2 and s["snapshots_skipped"] == 0
    assert s["exit_code"] == 0 and s["snapshots_failed"] == 0
    assert isinstance(s["bytes_uploaded"], int) and s["bytes_uploaded"] > 6 * 1024 * 1024
    assert s["packs_verified"] == s["packs_uploaded"] and s["packs_verified"]
    copied = {c["source_id"]: c["target_id"] for c in s["copied"]}  # type: ignore[attr-defined]
    assert set(copied) == {web, db}

    snaps = {str(x["id"]): x for x in target_snapshots(target, monkeypatch)}
    assert set(snaps) == set(copied.values())
    source_snaps = json.loads(cli("--repo", str(repo_path), "--json", "snapshots").stdout)
    for src in source_snaps:
        dst = snaps[copied[src["id"]]]
        for key in ("time", "client", "job", "paths", "hostname", "tags"):
            assert dst[key] == src[key], key
        assert dst["tree"] != src["tree"]  # re-identified under the target's id key

    assert in_target(target, "check", "--read-data", monkeypatch=monkeypatch).code == 0
    for client, sid in (("web", web), ("db", db)):
        out = tmp_path / f"restored-{client}"
        r = in_target(
            target, "restore", copied[sid][:12], "--target", str(out), "--verify",
            monkeypatch=monkeypatch,
        )  # fmt: skip
        assert r.code == 0, r.stderr
        assert_same_tree(trees[client], out / trees[client].relative_to("/"))
        assert os.readlink(out / trees[client].relative_to("/") / "link") == "small.txt"


def test_copy_by_client_and_by_id(
    repo_path: Path, target: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo_path, "web", trees["web"])
    db = backup(repo_path, "db", trees["db"])

    r = copy(repo_path, target, "--client", "web")
    assert r.code == 0, r.stderr
    assert summary_of(r)["snapshots_copied"] == 1
    assert [s["client"] for s in target_snapshots(target, monkeypatch)] == ["web"]

    r = copy(repo_path, target, db[:10])
    assert r.code == 0, r.stderr
    assert summary_of(r)["snapshots_copied"] == 1
    assert sorted(str(s["client"]) for s in target_snapshots(target, monkeypatch)) == [
        "db",
        "web",
    ]


def test_a_second_copy_copies_nothing_and_uploads_nothing(
    repo_path: Path, target: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo_path, "web", trees["web"])
    backup(repo_path, "db", trees["db"])
    assert copy(repo_path, target).code == 0
    files_before = sorted(p.name for p in target.rglob("*") if "locks" not in p.parts)

    r = copy(repo_path, target)
    assert r.code == 0, r.stderr
    s = summary_of(r)
    assert s["snapshots_copied"] == 0 and s["snapshots_skipped"] == 2
    assert s["bytes_uploaded"] == 0 and s["blobs_uploaded"] == 0 and s["packs_uploaded"] == 0
    assert s["blobs_read"] == 0  # nothing was even read from the source
    assert sorted(p.name for p in target.rglob("*") if "locks" not in p.parts) == files_before
    assert len(target_snapshots(target, monkeypatch)) == 2

    r = cli("--repo", str(repo_path), "copy", "--to", str(target))
    assert r.code == 0
    assert "0 snapshot(s) copied" in r.stdout and "2 already there" in r.stdout


def test_copying_back_to_where_a_snapshot_came_from_copies_nothing(
    repo_path: Path, target: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo_path, "web", trees["web"])
    assert copy(repo_path, target).code == 0
    with monkeypatch.context() as m:
        m.setenv("STRONGROOM_PASSWORD", TARGET_PASSWORD)
        m.setenv("STRONGROOM_TO_PASSWORD", PASSWORD)
        r = cli("--repo", str(target), "--json", "copy", "--to", str(repo_path))
    assert r.code == 0, r.stderr
    s = summary_of(r)
    assert s["snapshots_copied"] == 0 and s["snapshots_skipped"] == 1


def test_a_later_snapshot_uploads_only_what_the_target_lacks(
    repo_path: Path, target: Path, trees: dict[str, Path]
) -> None:
    backup(repo_path, "web", trees["web"])
    first = summary_of(copy(repo_path, target))
    (trees["web"] / "new.txt").write_bytes(b"written after the first copy\n")
    backup(repo_path, "web", trees["web"])

    r = copy(repo_path, target)
    assert r.code == 0, r.stderr
    s = summary_of(r)
    assert s["snapshots_copied"] == 1 and s["snapshots_skipped"] == 1
    assert isinstance(s["blobs_deduplicated"], int) and s["blobs_deduplicated"] >= 3
    # The new file and two changed trees; the 3 MiB file is not sent again.
    assert isinstance(s["bytes_uploaded"], int) and s["bytes_uploaded"] < 4096
    assert isinstance(first["bytes_uploaded"], int) and first["bytes_uploaded"] > 3 * 1024**2


def test_small_files_backed_up_into_the_target_itself_are_not_stored_twice(
    repo_path: Path, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files under the minimum chunk size are one chunk whatever the chunker's seed, so
    they deduplicate against the target's own backups (bigger files do not: see the
    copier's docstring)."""
    small = tmp_path / "small"
    small.mkdir()
    for i in range(5):
        (small / f"f{i}").write_bytes(os.urandom(50_000))
    with monkeypatch.context() as m:
        m.setenv("STRONGROOM_PASSWORD", TARGET_PASSWORD)
        backup(target, "direct", small)
    backup(repo_path, "web", small)

    s = summary_of(copy(repo_path, target))
    assert s["snapshots_copied"] == 1
    assert isinstance(s["blobs_deduplicated"], int) and s["blobs_deduplicated"] >= 5
    assert isinstance(s["bytes_uploaded"], int) and s["bytes_uploaded"] < 5 * 50_000
    assert in_target(target, "check", "--read-data", monkeypatch=monkeypatch).code == 0


def test_damaged_source_data_is_exit_13_and_no_snapshot_names_it(
    repo_path: Path, target: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    web = backup(repo_path, "web", trees["web"])
    before = {p for p in (repo_path / "data").rglob("*") if p.is_file()}
    db = backup(repo_path, "db", trees["db"])
    db_packs = sorted(
        (p for p in (repo_path / "data").rglob("*") if p.is_file() and p not in before),
        key=lambda p: p.stat().st_size,
    )
    damaged = db_packs[-1]  # db's data pack, with its 3 MiB file
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(bytes(data))

    r = copy(repo_path, target)
    assert r.code == 13, r.stderr
    s = summary_of(r)
    assert s["snapshots_copied"] == 1 and s["snapshots_failed"] == 1
    assert [f["source_id"] for f in s["failed"]] == [db]  # type: ignore[attr-defined]
    errors = [line for line in json_lines(r.stdout) if line["type"] == "error"]
    assert errors and "authentication failed" in str(errors[0]["message"])

    snaps = target_snapshots(target, monkeypatch)
    assert [s["client"] for s in snaps] == ["web"]
    assert in_target(target, "check", "--read-data", monkeypatch=monkeypatch).code == 0

    r = cli("--repo", str(repo_path), "copy", "--to", str(target))
    assert r.code == 13
    assert f"snapshot {db[:8]} not copied" in r.stderr and "Traceback" not in r.stderr
    assert web  # copied the first time, skipped the second


def test_dry_run_copies_nothing(
    repo_path: Path, target: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = backup(repo_path, "web", trees["web"])
    r = copy(repo_path, target, "--dry-run")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["would_copy"] == [sid]
    assert target_snapshots(target, monkeypatch) == []


def test_target_password_from_a_file_and_a_wrong_one(
    repo_path: Path, target: Path, trees: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    backup(repo_path, "web", trees["web"])
    monkeypatch.delenv("STRONGROOM_TO_PASSWORD")
    r = cli("--repo", str(repo_path), "copy", "--to", str(target))
    assert r.code == 12 and "no password for the target" in r.stderr

    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not it\n")
    r = copy(repo_path, target, "--to-password-file", str(wrong))
    assert r.code == 12 and "target repository" in r.stderr

    right = tmp_path / "right.pass"
    right.write_text(TARGET_PASSWORD + "\n")
    r = copy(repo_path, target, "--to-password-file", str(right))
    assert r.code == 0, r.stderr
    assert summary_of(r)["snapshots_copied"] == 1


def test_to_names_a_configured_repository_with_its_password(
    repo_path: Path, target: Path, trees: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("STRONGROOM_TO_PASSWORD")
    secret = tmp_path / "vault.pass"
    secret.write_text(TARGET_PASSWORD + "\n")
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[repositories.main]\nurl = "{repo_path}"\n\n'
        f'[repositories.vault]\nurl = "{target}"\npassword_file = "{secret}"\n'
    )
    backup(repo_path, "web", trees["web"])
    r = cli("--config", str(config), "--repo", "main", "--json", "copy", "--to", "vault")
    assert r.code == 0, r.stderr
    assert summary_of(r)["snapshots_copied"] == 1
    assert len(target_snapshots(target, monkeypatch)) == 1


def test_copying_into_the_same_repository_is_refused(
    repo_path: Path, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo_path, "web", trees["web"])
    monkeypatch.setenv("STRONGROOM_TO_PASSWORD", PASSWORD)
    r = cli("--repo", str(repo_path), "copy", "--to", str(repo_path))
    assert r.code == 2 and "source repository itself" in r.stderr
    assert len(json.loads(cli("--repo", str(repo_path), "--json", "snapshots").stdout)) == 1


def test_copy_does_not_rely_on_packs_a_collection_has_marked(
    repo_path: Path, target: Path, trees: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A copy is a writer of the target: data whose only copy there is in a pack a gc
    marker names is uploaded again, so the collection may go ahead (R7)."""
    from strongroom.backend import LocalBackend
    from strongroom.repository import Repository
    from strongroom.repository.crypto import storage_id
    from strongroom.repository.gc import GcMarker, encode_marker

    backup(repo_path, "web", trees["web"])
    first = summary_of(copy(repo_path, target))
    for snap in (target / "snapshots").iterdir():
        snap.unlink()  # forgotten in the target: its packs are unreferenced
    backend = LocalBackend(target)
    repo = Repository.open(backend, TARGET_PASSWORD.encode())
    packs = [name for name, _ in repo.packs()]
    raw = encode_marker(repo.master, GcMarker(1, 0, packs, [], True, 3600))
    backend.save(f"gc/{storage_id(raw)}", raw)

    s = summary_of(copy(repo_path, target))
    assert s["snapshots_copied"] == 1
    assert s["bytes_uploaded"] == first["bytes_uploaded"]  # nothing relied on marked packs
    for pack in packs:  # the collection sweeps everything it marked
        (target / "data" / pack[:2] / pack).unlink()
    assert in_target(target, "check", "--read-data", monkeypatch=monkeypatch).code == 0
    (copied,) = target_snapshots(target, monkeypatch)
    out = tmp_path / "restored"
    r = in_target(target, "restore", str(copied["id"]), "--target", str(out),
                  monkeypatch=monkeypatch)  # fmt: skip
    assert r.code == 0, r.stderr
    assert_same_tree(trees["web"], out / trees["web"].relative_to("/"))
