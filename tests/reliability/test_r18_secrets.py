"""R18: secrets never leak.

Distinct marker values serve as the repository password, a second key's password and a
wrong password. Real ``strongroom`` processes run every command with ``-v`` (tracebacks
on) and with forced errors (a missing repository, a damaged pack, a wrong password),
taking the password from the environment, a file and a command. None of the markers may
appear, raw or encoded, in any output, any repository file, the cache, or the arguments
of any process on the machine while they run.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.reliability.helpers import flip_bit, repo_objects, write_tree


def _encodings(marker: str) -> list[bytes]:
    raw = marker.encode()
    return [
        raw,
        raw.hex().encode(),
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        marker.encode("utf-16-le"),
        repr(raw).encode(),
    ]


class ProcessWatcher:
    """Reads every process's command line on the machine while commands run."""

    def __init__(self, markers: list[str]) -> None:
        self.markers = [m.encode() for m in markers]
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                for marker in self.markers:
                    if marker in cmdline:
                        self.hits.append(cmdline.replace(b"\0", b" ").decode("utf-8", "replace"))
            self.samples += 1
            self._stop.wait(0.005)

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_passwords_appear_nowhere(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    password = f"PW-MARKER-{token}-main"
    second = f"PW-MARKER-{token}-second"
    wrong = f"PW-MARKER-{token}-wrong"
    markers = [password, second, wrong, token]
    probe = f"PROBE-{token[::-1]}"  # proves the watcher sees arguments at all

    repo = tmp_path / "repo"
    cache = tmp_path / "cache"
    src = tmp_path / "src"
    write_tree(src, random.Random(3), files=40, big=1, big_size=1 << 20)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    password_file = secret_dir / "password"
    password_file.write_text(password + "\n")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | {
        "STRONGROOM_INSECURE_TEST_KDF": "1",
        "STRONGROOM_CACHE_DIR": str(cache),
    }
    by_env = base_env | {"STRONGROOM_PASSWORD": password}
    by_file = base_env | {"STRONGROOM_PASSWORD_FILE": str(password_file)}
    by_command = base_env | {"STRONGROOM_PASSWORD_COMMAND": f"cat {password_file}"}
    outputs: list[tuple[list[str], bytes]] = []

    def run(env: dict[str, str], *args: str, expect: int) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "strongroom", "-v", *args],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        outputs.append((list(args), done.stdout + done.stderr))
        assert done.returncode == expect, (args, done.returncode, done.stderr.decode()[-2000:])

    r = str(repo)
    target = tmp_path / "target"
    with ProcessWatcher([*markers, probe]) as watcher:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)", probe], check=True)
        run(by_env, "--repo", r, "init", expect=0)
        run(by_file, "--repo", r, "backup", "--client", "leak", str(src), expect=0)
        run(by_command, "--repo", r, "backup", "--client", "leak", str(src), expect=0)
        run(by_env | {"STRONGROOM_NEW_PASSWORD": second}, "--repo", r, "key", "add", expect=0)
        run(by_env, "--repo", r, "key", "list", expect=0)
        run(base_env | {"STRONGROOM_PASSWORD": second}, "--repo", r, "snapshots", expect=0)
        run(by_command, "--repo", r, "ls", "latest", expect=0)
        run(by_file, "--repo", r, "check", "--read-data", expect=0)
        run(by_env, "--repo", r, "restore", "latest", "--target", str(target), "--verify", expect=0)
        run(by_env, "--json", "--repo", r, "backup", "--client", "leak", str(src), expect=0)
        # Forced errors, with tracebacks on:
        run(by_env, "--repo", str(tmp_path / "nowhere"), "snapshots", expect=10)
        run(by_env, "--repo", r, "restore", "ffffffffff", "--target", str(target), expect=2)
        run(base_env | {"STRONGROOM_PASSWORD": wrong}, "--repo", r, "snapshots", expect=12)
        run(base_env | {"STRONGROOM_PASSWORD": wrong}, "--json", "--repo", r, "check", expect=12)
        run(
            base_env | {"STRONGROOM_PASSWORD_COMMAND": "exit 3"},
            "--repo",
            r,
            "snapshots",
            expect=12,
        )
        pack = max(repo_objects(repo)["pack"], key=lambda p: p.stat().st_size)
        flip_bit(pack, pack.stat().st_size // 2, 3)
        run(by_env, "--repo", r, "check", "--read-data", expect=13)
        run(by_file, "--repo", r, "restore", "latest", "--target", str(tmp_path / "t2"), expect=13)
        run(
            by_command,
            "--json",
            "--repo",
            r,
            "restore",
            "latest",
            "--target",
            str(tmp_path / "t3"),
            expect=13,
        )
    assert any(probe in hit for hit in watcher.hits), "the process watcher saw nothing"
    hits = [hit for hit in watcher.hits if probe not in hit]
    assert hits == [], f"a password was visible in process arguments: {hits}"

    needles = [e for m in markers for e in _encodings(m)]
    for args, output in outputs:
        leaked = [n for n in needles if n in output]
        assert not leaked, f"`strongroom {' '.join(args)}` printed a password: {leaked}"
    for root in (repo, cache, tmp_path / "target", tmp_path / "t2", tmp_path / "t3"):
        for path in (p for p in root.rglob("*") if p.is_file()) if root.exists() else ():
            data = path.read_bytes()
            leaked = [n for n in needles if n in data]
            assert not leaked, f"{path} holds a password (in some encoding): {leaked}"
    assert any((repo / "keys").iterdir()) and any(cache.rglob("*"))


@pytest.mark.parametrize("source", ["file", "command"])
def test_password_file_and_command_are_not_echoed_on_failure(tmp_path: Path, source: str) -> None:
    """When the password source itself fails, the error says so without its contents."""
    marker = f"PW-MARKER-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    if source == "file":
        path = tmp_path / "unreadable-dir" / "pw"
        env["STRONGROOM_PASSWORD_FILE"] = str(path)
    else:
        env["STRONGROOM_PASSWORD_COMMAND"] = f"echo {marker} >&2; echo {marker}; exit 1"
    done = subprocess.run(
        [sys.executable, "-m", "strongroom", "-v", "--repo", str(tmp_path / "r"), "snapshots"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode in (2, 10, 12), done.stderr
    assert marker.encode() not in done.stdout + done.stderr, done.stderr
