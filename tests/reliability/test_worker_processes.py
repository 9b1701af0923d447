"""Worker processes of `strongroom backup` (engine/workers.py) keep the promises.

A backup forks worker processes before it starts any thread; each takes batches of
files over a pipe, stores their blobs in packs of its own and reports them to the
parent, which decides every claim and writes the index, trees and snapshot. Here the
real CLI runs in a child process with STRONGROOM_WORKER_PROCESSES set; its worker is
found in /proc as the CLI's forked child, and child.py --trace-workers has the worker
record which batches it backed up, so no test passes without a worker doing the work.

    R1   the parent SIGKILLed at random moments: the worker dies with it, the
         repository checks, earlier snapshots restore, and the next backup re-sends
         exactly the data no index made durable
    -    the worker SIGKILLed: the backup fails at once (exit 1, "a worker process
         ended"), writes no snapshot, and leaves a repository that checks
    R12  the disk fills while the worker writes a pack: a clear "no space" error
    R13  the same snapshot, summary and warnings with and without worker processes,
    R14  and the files cache entries the worker made spare the next backup any read
    R6   dedup across processes: identical files stored once
    -    no fork while a second thread runs (fork copies only the calling thread)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strongroom.backend import LocalBackend
from strongroom.engine.walk import walk
from strongroom.errors import StorageFull
from strongroom.repository import DATA, TREE, Node, Repository
from strongroom.repository.crypto import SALT_SIZE
from strongroom.repository.pack import PACK_MAGIC
from tests.conftest import PASSWORD, cli
from tests.engine.metawalk import TreeDescription, describe, differences, user_xattrs_supported
from tests.reliability.helpers import (
    SEED,
    Manifest,
    assert_check_ok,
    assert_restored_exactly,
    content_addressed_mismatches,
    leftovers,
    manifest,
    restore,
    restored_root,
    snapshot_ids,
    soak_count,
    soak_only,
    write_tree,
)

CHILD = Path(__file__).with_name("child.py")
# Small packs and an index checkpoint every 2 packs (as in test_r01_crash.py): a backup
# of ~20 MB passes through dozens of packs and checkpoints, in the worker and here.
SMALL_PACK = 256 * 1024
CHECKPOINT_PACKS = "2"
OLD_NS = 1_600_000_000_123_456_789  # mtimes well outside the files cache's racy window


# --- running the CLI --------------------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    trace: list[dict[str, Any]]

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def summary(self) -> dict[str, Any]:
        doc = self.documents()[-1]
        assert doc["type"] == "summary", doc
        return doc

    def warnings(self) -> list[tuple[str, str]]:
        return sorted(
            (d["path"], d["message"])
            for d in self.documents()
            if d["type"] == "warning" and "path" in d
        )

    def worker_batches(self) -> list[dict[str, Any]]:
        return [t for t in self.trace if t["op"] == "batch"]


def _command(
    repo: Path,
    args: Sequence[str],
    *,
    trace: Path | None = None,
    small_packs: bool = True,
    no_dac_override: bool = False,
) -> list[str]:
    """The real CLI (through child.py, which only shrinks packs and adds the trace)."""
    command = [sys.executable, str(CHILD), "cli"]
    if small_packs:
        command += ["--pack-size", str(SMALL_PACK), "--checkpoint-packs", CHECKPOINT_PACKS]
    if trace is not None:
        command += ["--trace-workers", str(trace)]
    command += ["--", "--json", "--repo", str(repo), *args]
    if no_dac_override:
        # Root without the capabilities that let it read any file: a mode 000 file is
        # unreadable to the backup, as it would be to an ordinary user.
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    return command


def _env(workers: int) -> dict[str, str]:
    return dict(os.environ, STRONGROOM_WORKER_PROCESSES=str(workers))


def _read_trace(trace: Path | None) -> list[dict[str, Any]]:
    if trace is None or not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines()]


def _run(
    repo: Path,
    *args: str,
    workers: int = 1,
    trace: Path | None = None,
    small_packs: bool = True,
    no_dac_override: bool = False,
) -> Run:
    if trace is not None and trace.exists():
        trace.unlink()
    done = subprocess.run(
        _command(repo, args, trace=trace, small_packs=small_packs, no_dac_override=no_dac_override),
        env=_env(workers),
        capture_output=True,
        check=False,
        timeout=120,
    )
    return Run(
        done.returncode,
        done.stdout.decode(errors="surrogateescape"),
        done.stderr.decode(errors="replace"),
        _read_trace(trace),
    )


def _backup(repo: Path, src: Path, *, workers: int = 1, trace: Path | None = None) -> Run:
    """A backup that must succeed (exit 0)."""
    run = _run(repo, "backup", "--client", "w", str(src), workers=workers, trace=trace)
    assert run.code == 0, f"backup failed: exit {run.code}: {run.stderr[-3000:]}"
    assert run.summary()["snapshot_id"]
    return run


# --- processes ----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command name on (state, ppid, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # start time in clock ticks after boot: a reused pid is another process

    def running(self) -> bool:
        """Alive (a zombie waiting for a reaper counts as ended)."""
        f = _stat_fields(self.pid)
        return f is not None and int(f[19]) == self.start and f[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _children(pid: int, name: str | None = None) -> list[Proc]:
    """The children of ``pid``'s main thread (the one that forks the workers and the
    directory scanner), those called ``name`` (/proc/PID/comm) if given."""
    try:
        pids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look at them all
        pids = _all_pids()
    except OSError:
        return []
    found = []
    for child in pids:
        f = _stat_fields(child)
        if f is not None and int(f[1]) == pid and (name is None or _comm(child) == name):
            found.append(Proc(child, int(f[19])))
    return found


WORKER = "strongroom-work"  # what the CLI names its worker processes


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _running_with_argument(argument: str) -> list[int]:
    """Live processes whose command line holds ``argument`` (a forked worker keeps its
    parent's command line, so this finds it even after it lost its parent)."""
    found = []
    needle = os.fsencode(argument)
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        f = _stat_fields(pid)
        if needle in args and f is not None and f[0] not in ("Z", "X"):
            found.append(pid)
    return found


def _wait_for_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> Proc:
    """The worker process the CLI forks at the start of its backup."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(proc.pid, WORKER)
        if kids:
            assert len(kids) == 1, f"one worker process expected, found {kids}"
            return kids[0]
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"the backup ended (exit {proc.returncode}) without forking a worker "
                f"process: {err.decode(errors='replace')[-2000:]}"
            )
        time.sleep(0.002)
    raise AssertionError(f"no worker process appeared within {timeout}s")


def _assert_nothing_left(argument: str, *known: Proc, within: float = 5.0) -> None:
    """Within ``within`` seconds no process of the run is left: neither ``known`` ones
    nor any other holding ``argument`` (the run's repository) in its command line."""
    deadline = time.monotonic() + within
    while True:
        left = [p.pid for p in known if p.running()] + _running_with_argument(argument)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"processes of the run still running {within}s after it ended: {sorted(left)}"
            )
        time.sleep(0.01)


def _wait_for_batch(trace: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the worker has backed up a batch (the backup is under way in both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t["op"] == "batch" for t in _read_trace(trace)):
            return
        assert proc.poll() is None, "the backup ended before the worker backed up a batch"
        time.sleep(0.002)
    raise AssertionError("the worker backed up no batch")


# --- the repository -----------------------------------------------------------------------


def _open(repo: Path) -> Repository:
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    r.load_index()
    return r


def _indexed(repo: Path) -> dict[bytes, tuple[int, int]]:
    """Every blob an index makes durable: id prefix -> (type, raw length)."""
    return {
        key: (loc.type, loc.raw_length)
        for entries in _open(repo).index.by_pack().values()
        for key, loc in entries
    }


def _data_bytes(blobs: Iterable[tuple[int, int]]) -> int:
    return sum(raw for kind, raw in blobs if kind == DATA)


# --- source trees -------------------------------------------------------------------------


def _base_tree(src: Path, rng: random.Random) -> None:
    write_tree(src / "base", rng, files=150, sizes=(0, 10, 900, 6_000, 45_000))
    (src / "base" / "link").symlink_to("d0")


def _new_data(src: Path, rng: random.Random, small: int, big: int) -> int:
    """Replace ``src/new`` with fresh random data: ``small`` files of a few kB in 40
    directories (many batches, many claims) and ``big`` files of 3 MiB (many chunks and
    packs). Returns the bytes written."""
    new = src / "new"
    if new.exists():
        shutil.rmtree(new)
    total = 0
    for i in range(small):
        directory = new / f"d{i % 40}"
        directory.mkdir(parents=True, exist_ok=True)
        # Random and never tiny, so no two new blobs are alike: what is new is unique.
        data = rng.randbytes(rng.choice((300, 2_000, 7_000)))
        (directory / f"n{i}").write_bytes(data)
        total += len(data)
    for i in range(big):
        (new / f"big{i}").write_bytes(rng.randbytes(3 << 20))
        total += 3 << 20
    return total


# --- 1. R1: the parent killed at random moments --------------------------------------------


def _work_time(repo: Path, src: Path, scratch: Path) -> float:
    """How long a backup runs once its worker is forked (on a copy of the repository,
    with a copy of the files cache, so the timing matches the runs to be killed)."""
    shutil.copytree(repo, scratch / "repo")
    cache = Path(os.environ["STRONGROOM_CACHE_DIR"])
    env = _env(1)
    if cache.exists():
        shutil.copytree(cache, scratch / "cache")
    env["STRONGROOM_CACHE_DIR"] = str(scratch / "cache")
    cmd = _command(scratch / "repo", ["backup", "--client", "w", str(src)])
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as p:
        _wait_for_worker(p)
        start = time.monotonic()
        _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode(errors="replace")[-2000:]
    shutil.rmtree(scratch)
    return time.monotonic() - start


def _kill_parent_rounds(
    tmp_path: Path, rounds: int, kills: int, seed: int, size: tuple[int, int]
) -> Counter[str]:
    """``kills`` backups of new data (``size``: small and big files, see _new_data) in
    each of ``rounds`` repositories, each SIGKILLed at a random moment of its work."""
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    for r in range(rounds):
        work = tmp_path / f"round{r}"
        src, repo = work / "src", work / "repo"
        _base_tree(src, rng)
        assert cli("--repo", str(repo), "init").code == 0
        _new_data(src, rng, 50, 0)
        manifests: dict[str, Manifest] = {}
        first = last = _backup(repo, src).summary()["snapshot_id"]
        manifests[first] = manifest(src)
        new_bytes = _new_data(src, rng, *size)
        work_time = _work_time(repo, src, work / "scratch")
        print(f"round {r}: a backup runs ~{work_time:.3f}s once its worker is forked")
        for k in range(kills):
            if k:
                new_bytes = _new_data(src, rng, *size)
            current = manifest(src)
            before = set(snapshot_ids(repo))
            durable_before = _indexed(repo)
            delay = rng.uniform(0.0, 0.95) * work_time
            where = (
                f"round {r}, kill {k}: the parent killed {delay:.3f}s after its worker "
                f"appeared, of ~{work_time:.3f}s (seed {seed})"
            )
            cmd = _command(repo, ["backup", "--client", "w", str(src)])
            # Output to a file, not a pipe: a worker left alive would hold a pipe open.
            with (
                (work / "stderr").open("wb") as err,
                subprocess.Popen(cmd, env=_env(1), stdout=subprocess.DEVNULL, stderr=err) as proc,
            ):
                worker = _wait_for_worker(proc)
                time.sleep(delay)
                if proc.poll() is not None:
                    # Done sooner than measured (a busy machine timed the first run):
                    # aim the next kills within what this run took.
                    work_time = min(work_time, delay)
                proc.kill()
                proc.wait(timeout=60)
            if proc.returncode == -signal.SIGKILL:
                stats["killed"] += 1
            else:
                assert proc.returncode == 0, f"{where}: {(work / 'stderr').read_text()[-2000:]}"
                stats["finished first"] += 1
            # PR_SET_PDEATHSIG: the worker dies with its parent, whatever it was doing.
            _assert_nothing_left(str(repo), worker)

            for sid in set(snapshot_ids(repo)) - before:
                manifests[sid] = current  # the killed run committed its snapshot first
            assert_check_ok(repo, f"after a kill ({where})")
            # The last complete snapshot shares the most with the killed run's data
            # (every snapshot is restored at the end of the round).
            target = work / f"t{k}-{last[:8]}"
            result = restore(repo, last, target)
            assert result.code == 0, f"{where}: {result.stderr[-2000:]}"
            assert_restored_exactly(target, src, manifests[last])
            shutil.rmtree(target)

            after_kill = _indexed(repo)
            durable = _data_bytes(v for b, v in after_kill.items() if b not in durable_before)
            assert durable <= new_bytes, (where, durable, new_bytes)
            if 0 < durable < new_bytes:
                stats["killed after an index checkpoint"] += 1
            run = _backup(repo, src)
            resent = _data_bytes(v for b, v in _indexed(repo).items() if b not in after_kill)
            # What the index made durable (worker packs included) is never sent again;
            # all the rest is.
            assert resent == new_bytes - durable, (
                f"{where}: {durable} of {new_bytes} new bytes were indexed when the run "
                f"died, so the next backup should store {new_bytes - durable} bytes of "
                f"data; it stored {resent}"
            )
            _assert_nothing_left(str(repo))
            last = run.summary()["snapshot_id"]
            manifests[last] = current
        assert_check_ok(repo, f"at the end of round {r}")
        for sid, expected in manifests.items():
            target = work / f"final-{sid[:8]}"
            result = restore(repo, sid, target)
            assert result.code == 0, result.stderr[-2000:]
            assert_restored_exactly(target, src, expected)
            shutil.rmtree(target)
        shutil.rmtree(work)
    return stats


def test_parent_killed_at_random_moments_takes_its_worker_along(tmp_path: Path) -> None:
    # ~15 MB of new data a run: here that is ~0.25 s of work once the worker is forked.
    stats = _kill_parent_rounds(tmp_path, rounds=1, kills=8, seed=SEED, size=(800, 4))
    print(f"R1 with a worker process: {dict(stats)} (seed {SEED})")
    assert stats["killed"] >= 5, f"too few kills landed while the backup ran: {stats}"


@soak_only
def test_parent_killed_at_random_moments_soak(tmp_path: Path) -> None:
    kills = soak_count("worker_kills", 100)
    per_round = 10
    # And the soak's runs are bigger: ~45 MB of new data, about a second of work.
    stats = _kill_parent_rounds(
        tmp_path, rounds=max(1, kills // per_round), kills=per_round, seed=SEED, size=(2500, 12)
    )
    print(f"R1 soak with a worker process: {dict(stats)} (seed {SEED})")
    assert stats["killed"] >= kills // 2, stats


# --- 2. the worker killed ----------------------------------------------------------------


@pytest.mark.parametrize("moment", ["at-fork", "mid-backup"])
def test_a_worker_killed_mid_backup_fails_the_backup_cleanly(tmp_path: Path, moment: str) -> None:
    rng = random.Random(SEED)
    src, repo, trace = tmp_path / "src", tmp_path / "repo", tmp_path / "trace"
    _base_tree(src, rng)
    assert cli("--repo", str(repo), "init").code == 0
    first = _backup(repo, src).summary()["snapshot_id"]
    expected_first = manifest(src)
    _new_data(src, rng, 800, 4)

    cmd = _command(repo, ["backup", "--client", "w", str(src)], trace=trace)
    with subprocess.Popen(cmd, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        worker = _wait_for_worker(proc)
        if moment == "mid-backup":
            _wait_for_batch(trace, proc)
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the backup hung after its worker was killed") from None
    took = time.monotonic() - killed_at
    stderr = err.decode(errors="replace")
    assert proc.returncode == 1, f"exit {proc.returncode} after the worker was killed: {stderr}"
    assert took < 10, f"the backup took {took:.1f}s to notice its worker had died"
    assert "a worker process ended" in stderr, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    error = json.loads(out.decode().splitlines()[-1])
    assert (error["type"], error["exit_code"]) == ("error", 1), error
    assert snapshot_ids(repo) == [first], "a snapshot was written although a worker died"
    _assert_nothing_left(str(repo), worker)

    assert_check_ok(repo, f"after the worker was killed ({moment})")
    target = tmp_path / "t-first"
    assert restore(repo, first, target).code == 0
    assert_restored_exactly(target, src, expected_first)
    run = _backup(repo, src, trace=trace)
    assert run.worker_batches(), "the next backup's worker backed up nothing"
    assert_check_ok(repo, "after the backup that followed")
    target = tmp_path / "t-latest"
    assert restore(repo, run.summary()["snapshot_id"], target).code == 0
    assert_restored_exactly(target, src, manifest(src))


# --- 3. R12: the disk fills while the worker writes ---------------------------------------


def _fill_error(run: Run) -> dict[str, Any]:
    """The run's JSON error document, checked to be the clear full-disk error of R12."""
    text = (run.stdout + run.stderr).lower()
    assert run.code == 1, f"exit {run.code}, expected 1: {run.stderr[-2000:]}"
    assert "no space" in text, f"the error does not name the full storage: {run.stderr}"
    assert "internal error" not in text and "traceback" not in text, run.stderr[-2000:]
    error = run.documents()[-1]
    assert error["type"] == "error", error
    return error


def _one_big_file(src: Path, size: int) -> None:
    """A tree whose only file is big: it is the first batch of the backup, and the first
    batch goes to the first thread of the pool, the one bound to the worker process."""
    src.mkdir()
    (src / "big").write_bytes(random.Random(SEED).randbytes(size))


def test_full_disk_inside_a_worker(tmpfs_factory: Any, tmp_path: Path) -> None:
    mount = tmpfs_factory.make("disk", "20m")
    repo, src, trace = mount / "repo", tmp_path / "src", tmp_path / "trace"
    assert cli("--repo", str(repo), "init").code == 0
    _one_big_file(src, 40 << 20)  # two 16 MiB packs do not fit

    # The real program's 16 MiB packs: the first is published, the second fills the disk.
    cmd = _command(repo, ["backup", "--client", "full", str(src)], trace=trace, small_packs=False)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with (
        out.open("wb") as stdout,
        err.open("wb") as stderr,
        subprocess.Popen(cmd, env=_env(1), stdout=stdout, stderr=stderr) as p,
    ):
        worker = _wait_for_worker(p)
        p.wait(timeout=120)
    run = Run(p.returncode, out.read_text(), err.read_text(errors="replace"), _read_trace(trace))
    _fill_error(run)
    failed = [t for t in run.trace if t["op"] == "failed"]
    assert failed and "no space" in failed[0]["error"], (
        f"the disk did not fill inside the worker: {run.trace}"
    )
    _assert_nothing_left(str(repo), worker)
    assert content_addressed_mismatches(repo) == [], "a partial object under its final name"
    assert leftovers(repo) == [], "the worker did not discard its partial pack"
    assert snapshot_ids(repo) == []

    tmpfs_factory.resize(mount, "200m")
    assert_check_ok(repo, "after the disk filled up inside the worker and was enlarged")
    _backup(repo, src)
    assert_check_ok(repo, "after the backup that followed")
    target = tmp_path / "target"
    assert restore(repo, "latest", target).code == 0
    assert_restored_exactly(target, src, manifest(src))
    _assert_nothing_left(str(repo))


def test_full_disk_in_a_worker_is_reported_as_in_process(
    tmpfs_factory: Any, tmp_path: Path
) -> None:
    """The same full disk gives the same error (message, hint, exit code) whichever
    process met it: the user learns what to do either way."""
    mount = tmpfs_factory.make("disk", "20m")
    src = tmp_path / "src"
    _one_big_file(src, 40 << 20)
    errors = {}
    for workers in (0, 1):
        repo = mount / f"repo{workers}"
        assert cli("--repo", str(repo), "init").code == 0
        run = _run(
            repo,
            "backup",
            "--client",
            "full",
            str(src),
            workers=workers,
            trace=tmp_path / "trace",
            small_packs=False,
        )
        errors[workers] = _fill_error(run)
        assert bool(workers) == any(t["op"] == "failed" for t in run.trace), run.trace
        shutil.rmtree(repo)
    assert errors[0]["hint"] == StorageFull.hint
    # The worker's error travels whole: message, exit code, hint and details.
    assert errors[1] == errors[0], f"with a worker: {errors[1]}\nin-process: {errors[0]}"


# --- 4. the same snapshot with and without worker processes -------------------------------


def _parity_tree(src: Path) -> list[bytes]:
    """Files of every kind the worker reads, spread over many batches: modes, ns times,
    symlinks, hard links, a sparse file, xattrs, names that are not UTF-8, files big
    enough to be chunked; one file in 23 unreadable (mode 000). As root, also
    tests/engine/test_metadata.py's tree of every kind of file (devices, owners, ACLs).
    Returns the unreadable files."""
    src.mkdir()
    rng = random.Random(SEED)
    unreadable: list[bytes] = []
    many = src / "many"
    for i in range(480):
        directory = many / f"d{i % 24}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"f{i}"
        path.write_bytes(rng.randbytes(rng.choice((0, 5, 800, 9_000, 70_000))))
        if i % 23 == 7:
            path.chmod(0)
            unreadable.append(os.fsencode(path))
        else:
            path.chmod(rng.choice((0o644, 0o600, 0o755, 0o444, 0o4755)))
    (many / "d0" / "chunked").write_bytes(rng.randbytes(3 << 20))
    (many / "d1" / "chunked-copy").write_bytes((many / "d0" / "chunked").read_bytes())
    with open(many / "d2" / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(40 << 20)
        f.write(rng.randbytes(5000))
    os.link(many / "d3" / "f3", many / "d4" / "hardlink-to-f3")
    os.link(many / "d3" / "f3", many / "d5" / "hardlink-to-f3")
    os.symlink("../d0/f0", many / "d6" / "link")
    os.symlink(b"\xff-target", os.fsencode(many / "d6") + b"/bad-target")
    for name in (b"bad-\xff\xfe", b"new\nline", b"\xe9t\xe9"):
        with open(os.fsencode(many / "d7") + b"/" + name, "wb") as f:
            f.write(name * 100)
    if user_xattrs_supported(many):
        os.setxattr(many / "d8" / "f8", "user.comment", b"read by whichever process")
        os.setxattr(many / "d9" / "f9", "user.binary", b"\x00\xff")
    if os.geteuid() == 0:
        from tests.engine.test_metadata import build_source

        build_source(src / "meta")
    # ns times everywhere, deepest first (build_source set its own)
    paths = [
        os.path.join(d, n) for d, dirs, files in os.walk(os.fsencode(many)) for n in [*dirs, *files]
    ]
    paths.sort(key=lambda p: (-p.count(b"/"), p))
    for i, path in enumerate([*paths, os.fsencode(many), os.fsencode(src)]):
        t = OLD_NS + i * 1_000_003
        os.utime(path, ns=(t + 17, t), follow_symlinks=False)
    return unreadable


def _content_digest(repo: Repository, node: Node) -> str:
    """The file's bytes, holes as their length: equal however the chunker cut them."""
    h = hashlib.sha256()
    for part in node.content:
        if isinstance(part, int):
            h.update(b"\0hole %d\0" % part)
        else:
            h.update(repo.load_blob(part, DATA))
    return h.hexdigest()


def _snapshot_nodes(repo_path: Path, snapshot_id: str, below: bytes) -> dict[bytes, dict[str, Any]]:
    """The nodes of a snapshot at and below ``below``: every field but blob ids."""
    repo = _open(repo_path)
    snap = repo.load_snapshot(snapshot_id)
    nodes = {}
    try:
        for path, node in walk(repo, snap.tree):
            if path != below and not path.startswith(below + b"/"):
                continue
            values = {
                name: getattr(node, name)
                for name in Node.__struct_fields__
                if name not in ("content", "subtree")
            }
            if node.type == "file":
                values["content"] = _content_digest(repo, node)
            nodes[path] = values
    finally:
        repo.backend.close()
    return nodes


def _expected_restore(src: Path, warned: Iterable[str]) -> TreeDescription:
    """The source as described by metawalk, less what the backup could not read."""
    desc = describe(src)
    base = os.fsencode(src)
    for path in warned:
        rel = b"." + os.fsencode(path).removeprefix(base)
        for key in list(desc.entries):
            if key.startswith(rel + b"/") or (key == rel and desc.entries[key].type != "dir"):
                del desc.entries[key]
        for paths in desc.inodes.values():
            paths[:] = [p for p in paths if p in desc.entries]
    return desc


SAME_COUNTS = (
    "exit_code",
    "files_new",
    "files_changed",
    "files_unmodified",
    "files_read",
    "dirs",
    "bytes_read",
    "bytes_total",
    "warnings",
)


def _backups_with_and_without_workers(
    src: Path, repos: dict[int, Path], tmp_path: Path
) -> tuple[dict[int, Run], dict[int, dict[bytes, dict[str, Any]]]]:
    """Back ``src`` up into repos[0] in one process and into repos[1] with a worker;
    check that both say and store the same. Returns the runs and the snapshots' nodes."""
    root = os.geteuid() == 0
    runs = {
        workers: _run(
            repo,
            "backup",
            "--client",
            "same",
            str(src),
            workers=workers,
            trace=tmp_path / f"trace{workers}",
            small_packs=False,
            no_dac_override=root,
        )
        for workers, repo in repos.items()
    }
    for workers, run in runs.items():
        assert run.code == 3, f"workers={workers}: exit {run.code}: {run.stderr[-3000:]}"
    assert not runs[0].trace
    one, two = runs[0].summary(), runs[1].summary()
    assert {k: one[k] for k in SAME_COUNTS} == {k: two[k] for k in SAME_COUNTS}
    assert runs[1].warnings() == runs[0].warnings()
    # Node by node below the source (its ancestors are stored too, but other tests
    # change their times), every field but the blob ids, which are keyed per repository.
    nodes = {
        w: _snapshot_nodes(repos[w], runs[w].summary()["snapshot_id"], os.fsencode(src))
        for w in (0, 1)
    }
    assert nodes[0].keys() == nodes[1].keys()
    different = [
        (path, name, value, nodes[1][path][name])
        for path, node in nodes[0].items()
        for name, value in node.items()
        if nodes[1][path][name] != value
    ]
    assert not different, different[:10]
    _assert_nothing_left(str(repos[1]))
    return runs, nodes


def test_workers_give_the_same_snapshot_as_one_process(tmp_path: Path) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("as root, setpriv (util-linux) is needed to make files unreadable")
    src = tmp_path / "src"
    unreadable = _parity_tree(src)
    repos = {workers: tmp_path / f"repo{workers}" for workers in (0, 1)}
    for repo in repos.values():
        assert cli("--repo", str(repo), "init").code == 0

    runs, nodes = _backups_with_and_without_workers(src, repos, tmp_path)
    # The worker did its share, unreadable files and all.
    batches = runs[1].worker_batches()
    worker_files = {f for b in batches for f in b["files"]}
    worker_warned = {w[0] for b in batches for w in b["warnings"]}
    assert len(worker_files) >= 20, f"the worker backed up only {len(worker_files)} files"
    assert worker_warned & {os.fsdecode(p) for p in unreadable}, (
        "no unreadable file fell to the worker; its warnings were not compared"
    )
    warnings = runs[0].warnings()
    warned = {path for path, _ in warnings}
    assert {os.fsdecode(p) for p in unreadable} <= warned, warnings
    assert all(m.startswith(("cannot open", "cannot list")) for _, m in warnings), warnings
    regular = sum(1 for n in nodes[1].values() if n["type"] == "file")
    assert runs[1].summary()["files_new"] == regular

    target = tmp_path / "target"
    r = cli("--repo", str(repos[1]), "restore", "latest", "--target", str(target))
    assert r.code == 0, r.stderr[-3000:]
    assert differences(_expected_restore(src, warned), describe(restored_root(target, src))) == []

    # Some files change. The next backups read those and no other: the files cache
    # entries the worker made (and sent its parent) spare every unchanged file a read.
    changed = sorted(
        p
        for p in (src / "many").rglob("f*")
        if p.stat().st_mode & 0o444 and p.stat().st_size and p.stat().st_nlink == 1
    )[::25]
    for i, path in enumerate(changed):
        path.write_bytes(random.Random(i).randbytes(path.stat().st_size))
        os.utime(path, ns=(OLD_NS + 10**12, OLD_NS + 10**12 + i))
    runs, nodes = _backups_with_and_without_workers(src, repos, tmp_path)
    summary = runs[1].summary()
    assert (summary["files_new"], summary["files_changed"]) == (0, len(changed)), summary
    assert summary["files_read"] == len(changed), "unchanged files were read again"
    assert summary["bytes_read"] == sum(p.stat().st_size for p in changed)
    assert summary["files_unmodified"] == regular - len(changed), summary
    assert runs[1].warnings() == warnings  # the unreadable files, tried again


# --- 5. dedup across processes ------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_identical_files_across_processes_are_stored_once(tmp_path: Path, workers: int) -> None:
    rng = random.Random(SEED)
    src, repo, trace = tmp_path / "src", tmp_path / "repo", tmp_path / "trace"
    contents = [rng.randbytes(rng.randrange(100, 60_000)) for _ in range(30)]
    contents += [rng.randbytes((1 << 20) + rng.randrange(1 << 20)) for _ in range(3)]
    ideal = sum(len(c) for c in contents)
    for copy in range(8):
        for n, content in enumerate(contents):
            directory = src / f"copy{copy}" / f"d{n % 6}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"c{n}").write_bytes(content)
    assert cli("--repo", str(repo), "init").code == 0
    run = _backup(repo, src, workers=workers, trace=trace)

    worker_files = {f for b in run.worker_batches() for f in b["files"]}
    assert worker_files, "the worker backed up nothing"
    all_files = {str(p) for p in src.rglob("c*") if p.is_file()}
    if workers < (os.cpu_count() or 1):  # the parent reads files too
        assert worker_files < all_files, "the parent backed up nothing: no dedup across them"
    else:  # as many workers as cores: the workers read every file, between them
        assert worker_files == all_files
        pids = {b["pid"] for b in run.worker_batches()}
        assert len(pids) == workers, f"not every worker backed files up: {pids}"

    summary = run.summary()
    assert summary["bytes_read"] == 8 * ideal
    indexed = _indexed(repo)
    assert _data_bytes(indexed.values()) == ideal
    r = _open(repo)
    stored = Counter(entry.id for name in r.index_files for _, entry in r.read_index_file(name))
    twice = [i.hex()[:16] for i, n in stored.items() if n > 1]
    assert not twice, f"blobs stored in more than one pack: {twice[:10]}"
    trees = sum(raw for kind, raw in indexed.values() if kind == TREE)
    assert summary["bytes_new"] == ideal + trees, summary
    pack_files = [p for p in (repo / "data").rglob("*") if p.is_file()]
    packs = sum(p.stat().st_size for p in pack_files)
    assert packs < ideal * 1.02 + trees + 64 * 1024, (packs, ideal)
    # R16: each pack is encrypted under a subkey of its own salt, with counter nonces;
    # packs written by forked processes must not share one.
    salts = Counter(
        p.read_bytes()[len(PACK_MAGIC) : len(PACK_MAGIC) + SALT_SIZE] for p in pack_files
    )
    assert len(salts) == len(pack_files), "two packs share a salt, so their nonces repeat"
    assert_check_ok(repo)
    _assert_nothing_left(str(repo))


# --- 6. no fork while a second thread runs -------------------------------------------------

FORK_GUARD = textwrap.dedent(
    """
    import json, os, threading
    from strongroom.clock import SystemClock
    from strongroom.engine.workers import Workers

    def children():
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    text = open(f"/proc/{name}/stat").read()
                except OSError:
                    continue
                if int(text[text.rindex(")") + 2 :].split()[1]) == os.getpid():
                    found.append(int(name))
        return found

    result = {"threads_at_start": threading.active_count()}
    with Workers(1, SystemClock()) as alone:  # one thread: the worker is forked
        result["alone"] = len(alone.workers)
        result["children_alone"] = len(children())
    result["children_after_close"] = len(children())

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    with Workers(1, SystemClock()) as beside:  # a second thread: nothing is forked
        result["beside_a_thread"] = len(beside.workers)
        result["children_beside_a_thread"] = len(children())
    stop.set()
    thread.join()
    print(json.dumps(result))
    """
)


def test_no_worker_is_forked_while_a_second_thread_runs() -> None:
    """A fork copies only the calling thread: a lock another thread held (the heap's,
    a logging handler's) would stay locked in the worker forever. So Workers forks
    nothing once a second thread runs. In a fresh interpreter, so the control (one
    thread: a worker is forked, and reaped on close) is meaningful too."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_GUARD], capture_output=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result = json.loads(done.stdout)
    assert result == {
        "threads_at_start": 1,
        "alone": 1,
        "children_alone": 1,
        "children_after_close": 0,
        "beside_a_thread": 0,
        "children_beside_a_thread": 0,
    }


# --- 6. `strongroom run` of a local client ------------------------------------------------


def _run_config(tmp_path: Path, clients: dict[str, Path]) -> Path:
    (tmp_path / "pass").write_text(PASSWORD)
    assert cli("--repo", str(tmp_path / "repo"), "init").code == 0
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\npassword_file = "{tmp_path}/pass"\n\n'
        f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        + "".join(
            f'[clients.{name}]\ntransport = "local"\nsources = ["{src}"]\n\n'
            for name, src in clients.items()
        )
    )
    return config


@pytest.mark.parametrize("clients", [1, 2])
def test_a_local_run_backs_up_through_worker_processes(tmp_path: Path, clients: int) -> None:
    """`strongroom run` of the director's own files forks worker processes as `backup`
    does (before the catalog opens or a thread starts); with two local clients in one
    command, each runs with threads (a worker serves one backup). Either way every
    snapshot restores exactly."""
    rng = random.Random(SEED)
    sources = {f"c{n}": tmp_path / f"src{n}" for n in range(clients)}
    for src in sources.values():
        _base_tree(src, rng)
        _new_data(src, rng, small=300, big=2)
    config = _run_config(tmp_path, sources)
    trace = tmp_path / "trace"
    command = [sys.executable, str(CHILD), "cli", "--trace-workers", str(trace), "--"]
    done = subprocess.run(
        [*command, "--json", "--config", str(config), "run", *sources],
        env=_env(1),
        capture_output=True,
        check=False,
        timeout=300,
    )
    run = Run(done.returncode, done.stdout.decode(), done.stderr.decode(), _read_trace(trace))
    assert run.code == 0, run.stderr[-3000:]
    summaries = [d for d in run.documents() if d["type"] == "summary"]
    assert sorted(s["client"] for s in summaries) == sorted(sources)
    assert all(s["exit_code"] == 0 for s in summaries), summaries
    worker_files = {f for b in run.worker_batches() for f in b["files"]}
    if clients == 1:
        assert len(worker_files) >= 20, f"the worker backed up {len(worker_files)} files"
        assert all(f.startswith(str(sources["c0"])) for f in worker_files)
    else:
        assert not worker_files
    for name, src in sources.items():
        target = tmp_path / f"target-{name}"
        r = restore(tmp_path / "repo", "latest", target, "--client", name)
        assert r.code == 0, r.stderr[-3000:]
        assert_restored_exactly(target, src, manifest(src))
    assert_check_ok(tmp_path / "repo", "after local runs with worker processes")
