"""R6: many writers at once lose nothing. R9: stale locks don't stall, live ones hold."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.clock import FakeClock, SystemClock
from strongroom.errors import LockedError
from strongroom.repository.locks import RepositoryLock
from tests.conftest import cli

WRITERS = int(os.environ.get("STRONGROOM_R6_WRITERS", "12"))


def _tree(root: Path, seed: int) -> None:
    """Overlapping trees: a shared part identical across writers, and a private part."""
    rng = random.Random(seed)
    shared = random.Random(7)
    for i in range(20):
        (root / "shared").mkdir(parents=True, exist_ok=True)
        (root / "shared" / f"s{i}").write_bytes(shared.randbytes(shared.choice([100, 70_000])))
    for i in range(10):
        (root / "own").mkdir(parents=True, exist_ok=True)
        (root / "own" / f"o{i}").write_bytes(rng.randbytes(rng.choice([10, 5000, 300_000])))


def test_many_concurrent_writers_lose_nothing(repo_path: Path, tmp_path: Path) -> None:
    sources = []
    for n in range(WRITERS):
        src = tmp_path / f"client{n}"
        _tree(src, n)
        sources.append(src)
    env = dict(os.environ)
    commands = [
        [sys.executable, "-m", "strongroom", "--repo", str(repo_path), "--json", "backup",
         "--client", f"client{n}", str(src)]
        for n, src in enumerate(sources)
    ]  # fmt: skip
    # Random start times, as in a real night: later writers see earlier ones' index.
    delays = random.Random(3)
    procs = []
    for c in commands:
        time.sleep(delays.uniform(0, 0.15))
        procs.append(subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        assert json.loads(out.decode().splitlines()[-1])["exit_code"] == 0

    r = cli("--repo", str(repo_path), "check", "--read-data", "--json")
    assert r.code == 0, r.stdout
    snaps = json.loads(cli("--repo", str(repo_path), "snapshots", "--json").stdout)
    assert len(snaps) == WRITERS
    for n, src in enumerate(sources):
        target = tmp_path / f"restore{n}"
        r = cli("--repo", str(repo_path), "restore", "latest", "--client", f"client{n}",
                "--target", str(target))  # fmt: skip
        assert r.code == 0, r.stderr
        restored = target / str(src).lstrip("/")
        for f in src.rglob("*"):
            if f.is_file():
                assert (restored / f.relative_to(src)).read_bytes() == f.read_bytes()
    # Close to the deduplicated ideal. Writers that run at the same moment may each store
    # the shared part (nothing coordinates them but the index), never more than that.
    shared_bytes = sum(f.stat().st_size for f in (sources[0] / "shared").iterdir())
    own_bytes = sum(f.stat().st_size for s in sources for f in (s / "own").iterdir())
    stored = sum(f.stat().st_size for f in (repo_path / "data").rglob("*") if f.is_file())
    assert stored < own_bytes + WRITERS * shared_bytes + 1_000_000
    # A writer that comes after them stores only what is new: its own files.
    late = tmp_path / "late"
    _tree(late, 99)
    own_late = sum(f.stat().st_size for f in (late / "own").iterdir())
    r = cli("--repo", str(repo_path), "backup", "--client", "late", str(late))
    assert r.code == 0, r.stderr
    grown = sum(f.stat().st_size for f in (repo_path / "data").rglob("*") if f.is_file()) - stored
    assert grown < own_late + 100_000, (grown, own_late)


def _lock(repo: Path, clock: object = None, *, exclusive: bool, host: str = "") -> RepositoryLock:
    return RepositoryLock(
        LocalBackend(repo), clock or SystemClock(), exclusive=exclusive,  # type: ignore[arg-type]
        hostname=host or socket.gethostname(), purpose="test", lease_s=60,
    )  # fmt: skip


def test_a_dead_local_holders_lock_is_reclaimed(repo_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c",
         "import sys, socket; from strongroom.backend import LocalBackend;"
         "from strongroom.clock import SystemClock;"
         "from strongroom.repository.locks import RepositoryLock;"
         f"RepositoryLock(LocalBackend({str(repo_path)!r}), SystemClock(), exclusive=True,"
         " hostname=socket.gethostname(), purpose='killed').acquire();"
         "import os; os._exit(0)"],
        check=True,
    )  # fmt: skip
    assert child.returncode == 0
    assert list((repo_path / "locks").iterdir()), "the dead child left no lock behind"
    lock = _lock(repo_path, exclusive=True).acquire()  # reclaimed, not refused
    lock.release()
    assert not list((repo_path / "locks").iterdir())


def test_another_hosts_lock_is_respected_until_it_expires(repo_path: Path) -> None:
    clock = FakeClock(start_ns=int(os.stat(repo_path / "config").st_mtime * 1e9))
    other = _lock(repo_path, clock, exclusive=True, host="elsewhere.example").acquire()
    try:
        with pytest.raises(LockedError, match=r"elsewhere\.example"):
            _lock(repo_path, clock, exclusive=False).acquire()
        r = cli("--repo", str(repo_path), "backup", str(repo_path / "config"))
        assert r.code == 11 and "locked" in r.stderr
        clock.advance(61)  # past the lease: its holder may no longer commit
        _lock(repo_path, clock, exclusive=False).acquire().release()
        with pytest.raises(LockedError, match="expired"):
            other.ensure_valid()
    finally:
        other.release()


def test_a_corrupt_lock_is_a_clear_error(repo_path: Path) -> None:
    (repo_path / "locks").mkdir(exist_ok=True)
    (repo_path / "locks" / "garbage").write_bytes(b"\x00not json")
    r = cli("--repo", str(repo_path), "backup", str(repo_path / "config"))
    assert r.code == 11
    assert "locks/garbage" in r.stderr and "corrupt" in r.stderr


def test_shared_locks_do_not_block_each_other(repo_path: Path) -> None:
    a = _lock(repo_path, exclusive=False).acquire()
    b = _lock(repo_path, exclusive=False).acquire()
    with pytest.raises(LockedError):
        _lock(repo_path, exclusive=True).acquire()
    a.release()
    b.release()
    _lock(repo_path, exclusive=True).acquire().release()
