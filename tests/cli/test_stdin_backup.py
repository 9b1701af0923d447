"""`backup --stdin-name NAME --stdin-from CMD`: a command's output as /stdin/NAME."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli

SIZE = 20_000_000
GENERATE = f"import random,sys; sys.stdout.buffer.write(random.Random(3).randbytes({SIZE}))"


def _generator() -> str:
    return shlex.join([sys.executable, "-c", GENERATE])


def test_paths_and_a_stream_in_one_backup_restore_and_dump(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "etc"
    src.mkdir()
    (src / "app.conf").write_text("port = 5432\n")
    r = cli("--repo", str(repo_path), "backup", str(src), "--stdin-name", "sql/app.dump",
            "--stdin-from", _generator(), "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["exit_code"] == 0
    assert summary["snapshot_id"] and summary["files_new"] == 2
    assert summary["bytes_read"] == SIZE + len("port = 5432\n")

    expected = random.Random(3).randbytes(SIZE)
    r = cli("--repo", str(repo_path), "dump", "latest", "/stdin/sql/app.dump")
    assert r.code == 0, r.stderr
    assert r.stdout_bytes == expected

    snaps = json.loads(cli("--repo", str(repo_path), "snapshots", "--json").stdout)
    assert snaps[0]["paths"] == [str(src), "/stdin/sql/app.dump"]

    target = tmp_path / "restored"
    r = cli("--repo", str(repo_path), "restore", "latest", "--target", str(target))
    assert r.code == 0, r.stderr
    assert (target / "stdin" / "sql" / "app.dump").read_bytes() == expected
    assert (target / str(src).lstrip("/") / "app.conf").read_text() == "port = 5432\n"

    # The same dump again: read in full, stored once.
    r = cli("--repo", str(repo_path), "backup", "--stdin-name", "sql/app.dump",
            "--stdin-from", _generator(), "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    again = json.loads(r.stdout.splitlines()[-1])
    assert again["bytes_read"] == SIZE and again["bytes_new"] < 100_000


def test_a_failing_stdin_command_exits_1_and_writes_no_snapshot(repo_path: Path) -> None:
    script = "echo connecting; echo 'pg_dump: error: connection refused' >&2; exit 7"
    r = cli("--repo", str(repo_path), "backup", "--stdin-name", "app.dump",
            "--stdin-from", shlex.join(["sh", "-c", script]))  # fmt: skip
    assert r.code == 1, r.stdout + r.stderr
    assert "stream app.dump (command: sh -c" in r.stderr
    assert "exited with code 7" in r.stderr and "connection refused" in r.stderr
    assert "no snapshot was written" in r.stderr
    assert json.loads(cli("--repo", str(repo_path), "snapshots", "--json").stdout) == []

    r = cli("--repo", str(repo_path), "backup", "--stdin-name", "x", "--stdin-from", "false",
            "--json")  # fmt: skip
    assert r.code == 1
    error = json.loads(r.stdout.splitlines()[-1])
    assert error["type"] == "error" and error["exit_code"] == 1
    assert "command: false) exited with code 1" in error["message"]
    assert json.loads(cli("--repo", str(repo_path), "snapshots", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stdin-name", "x"], "--stdin-name and --stdin-from go together"),
        (["--stdin-from", "echo hi"], "--stdin-name and --stdin-from go together"),
        ([], "nothing to back up"),
        (["--stdin-name", "../x", "--stdin-from", "echo hi"], "relative path"),
        (["--stdin-name", "/x", "--stdin-from", "echo hi"], "relative path"),
        (["--stdin-name", "x", "--stdin-from", "echo 'unclosed"], "--stdin-from"),
        (["--stdin-name", "x", "--stdin-from", "  "], "the command is empty"),
    ],
)
def test_stdin_options_are_checked(repo_path: Path, args: list[str], message: str) -> None:
    r = cli("--repo", str(repo_path), "backup", *args)
    assert r.code == 2, r.stdout + r.stderr
    assert message in r.stderr


def test_the_stream_goes_to_the_repository_and_nowhere_else(
    repo_path: Path, tmp_path: Path
) -> None:
    """No temporary file: TMPDIR and the working directory stay empty and, traced, the
    process opens files for writing only in the repository and its small files cache."""
    tmpdir, cwd, cache = tmp_path / "tmpdir", tmp_path / "cwd", tmp_path / "cache"
    tmpdir.mkdir()
    cwd.mkdir()
    program = [sys.executable, "-m", "strongroom", "--repo", str(repo_path), "backup",
               "--stdin-name", "big.bin", "--stdin-from", _generator()]  # fmt: skip
    strace = shutil.which("strace")
    log = tmp_path / "strace.log"
    if strace is not None:
        calls = "open,openat,openat2,creat,memfd_create,rename,renameat,renameat2,link,linkat"
        program = [strace, "-f", "-qq", "-e", f"trace={calls}", "-o", str(log), *program]
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONDONTWRITEBYTECODE": "1",
           "STRONGROOM_CACHE_DIR": str(cache)}  # fmt: skip
    proc = subprocess.run(program, cwd=cwd, env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert list(tmpdir.iterdir()) == [] and list(cwd.iterdir()) == []
    assert sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) < 100_000
    r = cli("--repo", str(repo_path), "dump", "latest", "/stdin/big.bin")
    assert r.stdout_bytes == random.Random(3).randbytes(SIZE)
    if strace is None:
        return
    trace = log.read_text()
    assert "memfd_create" not in trace
    writable = re.compile(r'"([^"]+)", [^)]*(O_WRONLY|O_RDWR|O_CREAT|O_TMPFILE)')
    written = {m[1] for m in writable.finditer(trace) if "ENOENT" not in m[0]}
    assert written, "the trace shows no writes at all: is strace working?"
    allowed = (str(repo_path) + "/", str(cache) + "/", "/dev/null")
    assert [p for p in written if not p.startswith(allowed)] == []
    assert any(p.startswith(str(repo_path) + "/") for p in written)
