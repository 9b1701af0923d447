"""scripts/demo.sh, the README's first command, run end to end on a small sample."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


def _sample(root: Path) -> Path:
    """A few files, a subdirectory, an empty directory and symlinks, all older than the
    files cache's racy window, so that a second run reads none of them."""
    sample = root / "sample"
    (sample / "sub" / "deeper").mkdir(parents=True)
    (sample / "empty").mkdir()
    (sample / "a.txt").write_text("alpha\n" * 100)
    (sample / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (sample / "sub" / "deeper" / "c.txt").write_text("gamma\n")
    (sample / "sub" / "deeper" / "c.txt").chmod(0o600)
    os.symlink("a.txt", sample / "link")
    os.symlink("/nonexistent/target", sample / "sub" / "dangling")
    an_hour_ago = time.time() - 3600
    for path in [*sample.rglob("*"), sample]:
        os.utime(path, (an_hour_ago, an_hour_ago), follow_symlinks=False)
    return sample


def _strongroom_on_path(root: Path) -> str:
    """A PATH whose `strongroom` is the one this test suite imports."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    program = bin_dir / "strongroom"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m strongroom "$@"\n')
    program.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _run_demo(tmp_path: Path, *args: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,  # the suite's cheap KDF (STRONGROOM_INSECURE_TEST_KDF) rides along
        "PATH": _strongroom_on_path(tmp_path),
        "STRONGROOM_DEMO_DIR": str(work),
        "STRONGROOM_DEMO_SKIP_SETUP": "1",
    }
    return subprocess.run(
        ["bash", str(DEMO), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tree(root: Path) -> dict[str, tuple[str, object, int]]:
    """Each entry below root: its kind, its content or link target, its mode bits."""
    found: dict[str, tuple[str, object, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path), 0)
        elif path.is_dir():
            found[rel] = ("dir", None, st.st_mode & 0o7777)
        else:
            found[rel] = ("file", path.read_bytes(), st.st_mode & 0o7777)
    return found


def test_the_demo_runs_the_configured_job_twice_restores_checks_and_reports(
    tmp_path: Path,
) -> None:
    sample = _sample(tmp_path)
    work = tmp_path / "work"

    r = _run_demo(tmp_path, str(sample), work=work)

    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    steps = re.findall(r"^== (\S+(?: \S+)?)", out, re.MULTILINE)
    assert steps == [
        "install (scripts/setup.sh)",
        f"write {work}/strongroom.toml",
        "strongroom config",
        "strongroom --repo",
        "strongroom run",
        "strongroom run",
        "strongroom --repo",
        "diff -r",
        "strongroom --repo",
        "strongroom report",
        "strongroom status",
        "summary",
    ]
    assert "1 client(s), 1 job(s)" in out and "1 sink(s) (event-log)" in out
    first, second = re.findall(r"^demo/default: succeeded, exit 0, snapshot .*$", out, re.M)
    assert ": 3 new, 0 changed, 0 unchanged files; " in first
    assert ": 0 new, 0 changed, 3 unchanged files; 0 B read, 0 B new, 0 B stored" in second
    assert "restored 3 files" in out and "verified 3 files" in out
    assert f"the restored tree is identical to {sample}" in out
    assert re.search(r"^no errors found: 2 snapshots", out, re.M)
    assert re.search(
        r"^runs since .*: 2 \(2 ok, 0 with warnings, 0 failed\) on 1 client", out, re.M
    )
    assert len(re.findall(r"^\S+  demo +default +succeeded 0 ", out, re.M)) == 2
    assert re.search(r"^demo +succeeded +exit 0 ", out, re.M)
    assert f"sample:      {sample}: " in out and ", 3 files" in out
    assert "events sent: run.started run.succeeded run.started run.succeeded" in out

    restored = work / "restore" / sample.relative_to("/")
    assert _tree(restored) == _tree(sample)
    assert {p.name for p in work.iterdir()} >= {
        "strongroom.toml", "repo.pass", "repo", "catalog.db", "events.jsonl", "restore",
    }  # fmt: skip
    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["client"], e["exit_code"]) for e in events] == [
        ("run.started", "demo", None),
        ("run.succeeded", "demo", 0),
    ] * 2


def test_the_demo_refuses_a_work_dir_that_is_not_empty(tmp_path: Path) -> None:
    sample = _sample(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "something").write_text("from before\n")

    r = _run_demo(tmp_path, str(sample), work=work)

    assert r.returncode == 2
    assert f"{work} is not empty" in r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["something"]
