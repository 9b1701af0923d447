"""A first end-to-end pass: init, backup, restore, check, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli


def test_backup_restore_check_round_trip(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n" * 1000)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4000)

    r = cli("--repo", str(repo_path), "backup", "--client", "web01", "--json", str(src))
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["exit_code"] == 0

    target = tmp_path / "target"
    r = cli(
        "restore",
        "latest",
        "--client",
        "web01",
        "--target",
        str(target),
        "--repo",
        str(repo_path),
        "--verify",
    )
    assert r.code == 0, r.stderr
    restored = target / src.relative_to("/")
    assert (restored / "a.txt").read_text() == "hello\n" * 1000
    assert (restored / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 4000

    r = cli("--repo", str(repo_path), "check", "--read-data")
    assert r.code == 0, r.stderr
