"""The console script's read-ahead list: written by one run, read by the next, ignored
when it belongs to another installation, and never in the way of a command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strongroom.cli import startup


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRONGROOM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert startup.cache_dir() == "/x/cache/strongroom"
    monkeypatch.setenv("STRONGROOM_CACHE_DIR", "/y")
    assert startup.cache_dir() == "/y"


def test_remember_then_read_gives_the_loaded_module_files(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "readahead")
    startup.remember(path, [])
    files = startup.read_list(path)
    assert startup.__file__ is not None
    assert any(f.endswith(".pyc") and "startup" in f for f in files)
    assert set(files) == startup.loaded_files()
    assert all(os.path.isabs(f) for f in files)


def test_remember_keeps_what_earlier_runs_loaded(tmp_path: Path) -> None:
    path = str(tmp_path / "readahead")
    startup.remember(path, ["/elsewhere/earlier.pyc"])
    assert "/elsewhere/earlier.pyc" in startup.read_list(path)
    before = os.stat(path).st_mtime_ns
    startup.remember(path, startup.read_list(path))  # nothing new: not rewritten
    assert os.stat(path).st_mtime_ns == before


def test_a_list_from_another_installation_or_damaged_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "readahead"
    path.write_text("strongroom-readahead 1 0.0.9 3.10.0 /other\n/a.pyc\n")
    assert startup.read_list(str(path)) == []
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert startup.read_list(str(path)) == []
    assert startup.read_list(str(tmp_path / "missing")) == []


def test_read_ahead_child_exits_cleanly(tmp_path: Path) -> None:
    present = tmp_path / "present.pyc"
    present.write_bytes(b"x" * 10_000)
    fifo = tmp_path / "fifo.pyc"
    os.mkfifo(fifo)  # opening it would block: a damaged list must not hang the child
    names = [str(fifo), str(present), str(tmp_path / "missing.so"), "/dev/null"]
    pid = startup.read_ahead(names)
    assert pid is not None
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the read-ahead child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert startup.read_ahead([]) is None


def test_the_console_script_writes_the_list_and_uses_it(tmp_path: Path) -> None:
    env = dict(os.environ, STRONGROOM_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "strongroom", "help", "exit-codes"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    files = startup.read_list(str(tmp_path / "cache" / "readahead"))
    assert any("click" in f for f in files)
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_an_unwritable_cache_costs_the_command_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = dict(os.environ, STRONGROOM_CACHE_DIR=str(blocker / "cache"))
    result = subprocess.run(
        [sys.executable, "-m", "strongroom", "help", "exit-codes"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_failing_list_write_never_changes_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strongroom.cli import main as cli_main

    def command() -> None:
        raise SystemExit(13)

    def broken(path: str, known: list[str]) -> None:
        raise RuntimeError("cannot remember")

    monkeypatch.setenv("STRONGROOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cli_main, "main", command)
    monkeypatch.setattr(startup, "remember", broken)
    with pytest.raises(SystemExit) as exited:
        startup.main()
    assert exited.value.code == 13
