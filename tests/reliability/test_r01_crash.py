"""R1: a crash never leaves a broken repository.

Real ``strongroom backup`` processes are SIGKILLed at random moments, and archiver
processes are SIGKILLed at each named step. After every kill: ``check --read-data``
passes, every earlier snapshot restores byte for byte, the next backup succeeds, and it
re-sends the data that was not yet made durable by an index (and nothing more).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.repository import DATA, Repository
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import (
    SEED,
    Manifest,
    assert_check_ok,
    assert_restored_exactly,
    backup,
    manifest,
    restore,
    snapshot_ids,
    soak_count,
    soak_only,
    write_tree,
)

CHILD = Path(__file__).with_name("child.py")
SMALL_PACK = 256 * 1024
# Trees and other metadata a re-run may add on top of the data it has to re-send.
METADATA_SLACK = 256 * 1024


def _new_data(src: Path, rng: random.Random, files: int, size: int) -> int:
    """Replace ``src/new`` with ``files`` fresh random files of ``size`` bytes."""
    new = src / "new"
    if new.exists():
        shutil.rmtree(new)
    new.mkdir()
    for i in range(files):
        (new / f"n{i}").write_bytes(rng.randbytes(size))
    (new / "small").write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    return files * size + (new / "small").stat().st_size


def _base_tree(src: Path, rng: random.Random) -> None:
    write_tree(src / "base", rng, files=120, sizes=(0, 10, 900, 6_000, 45_000), big=1)
    (src / "base" / "link").symlink_to("d0")


def _indexed(repo: Path) -> dict[bytes, tuple[int, int]]:
    """Every blob the repository's index makes durable: id prefix -> (type, raw length)."""
    r = Repository.open(LocalBackend(repo), PASSWORD.encode())
    r.load_index()
    return {
        key: (loc.type, loc.raw_length)
        for entries in r.index.by_pack().values()
        for key, loc in entries
    }


class _Mode:
    """How a killed backup is started: the real program, or the real CLI with small packs."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "real-program":
            # `python -m strongroom` untouched: 16 MiB packs, so each run writes 40 MB.
            self.files, self.size = 10, 4 << 20
        else:
            # The same CLI with 256 KiB packs and an index checkpoint every 2 packs.
            self.files, self.size = 8, 1 << 20

    def command(self, repo: Path, src: Path) -> list[str]:
        args = ["--repo", str(repo), "backup", "--client", "rel", str(src)]
        if self.name == "real-program":
            return [sys.executable, "-m", "strongroom", *args]
        return [
            sys.executable,
            str(CHILD),
            "cli",
            "--pack-size",
            str(SMALL_PACK),
            "--checkpoint-packs",
            "2",
            "--",
            *args,
        ]


def _timed_run(mode: _Mode, repo: Path, src: Path, scratch: Path) -> float:
    """How long one uninterrupted run takes (on a throwaway copy of the repository)."""
    shutil.copytree(repo, scratch / "repo")
    # The same files cache as the real runs will have, so the timing matches theirs.
    cache = Path(os.environ["STRONGROOM_CACHE_DIR"])
    if cache.exists():
        shutil.copytree(cache, scratch / "cache")
    env = dict(os.environ, STRONGROOM_CACHE_DIR=str(scratch / "cache"))
    start = time.monotonic()
    done = subprocess.run(
        mode.command(scratch / "repo", src), env=env, capture_output=True, check=False
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    shutil.rmtree(scratch)
    return elapsed


def _wait_up_to(proc: subprocess.Popen[bytes], start: float, delay: float) -> float | None:
    """Sleep until `delay` after `start`; how long `proc` ran if it exited before, else None."""
    while (now := time.monotonic()) < start + delay:
        if proc.poll() is not None:
            return now - start
        time.sleep(min(0.005, start + delay - now))
    return None


def _random_kill_rounds(
    tmp_path: Path, mode: _Mode, rounds: int, kills: int, seed: int
) -> Counter[str]:
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    for r in range(rounds):
        work = tmp_path / f"round{r}"
        src = work / "src"
        _base_tree(src, rng)
        repo = work / "repo"
        assert cli("--repo", str(repo), "init").code == 0
        _new_data(src, rng, 2, 100_000)
        manifests: dict[str, Manifest] = {}
        first = backup(repo, src)["snapshot_id"]
        manifests[first] = manifest(src)
        last = first
        new_bytes = _new_data(src, rng, mode.files, mode.size)
        full = _timed_run(mode, repo, src, work / "scratch")
        for k in range(kills):
            if k:
                new_bytes = _new_data(src, rng, mode.files, mode.size)
            current = manifest(src)
            before = set(snapshot_ids(repo))
            delay = rng.uniform(0.02, 0.95) * full
            start = time.monotonic()
            with subprocess.Popen(
                mode.command(repo, src), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            ) as proc:
                ran = _wait_up_to(proc, start, delay)
                proc.kill()
                _, err = proc.communicate(timeout=60)
            where = f"round {r}, kill {k} after {delay:.3f}s of ~{full:.3f}s (seed {seed})"
            if proc.returncode == -signal.SIGKILL:
                stats["killed"] += 1
            else:
                assert proc.returncode == 0, f"{where}: {err.decode()[-2000:]}"
                stats["finished first"] += 1
                if ran is not None:
                    # The timed run was slower than this one (a busy host while it ran):
                    # aim the later kills inside the time a run really takes now.
                    full = min(full, ran)
            for sid in set(snapshot_ids(repo)) - before:
                manifests[sid] = current  # a snapshot the killed run managed to commit
            assert_check_ok(repo, f"after a kill ({where})")
            for sid in {first, last}:
                target = work / f"t{k}-{sid[:8]}"
                result = restore(repo, sid, target)
                assert result.code == 0, f"{where}: {result.stderr[-2000:]}"
                assert_restored_exactly(target, src, manifests[sid])
                shutil.rmtree(target)
            doc = backup(repo, src)
            assert doc["bytes_new"] <= new_bytes + METADATA_SLACK, (
                f"{where}: the next backup stored {doc['bytes_new']} new bytes; "
                f"at most {new_bytes} were new since the last complete run"
            )
            last = doc["snapshot_id"]
            manifests[last] = current
            assert_check_ok(repo, f"after the backup that followed a kill ({where})")
        for sid, expected in manifests.items():
            target = work / f"final-{sid[:8]}"
            result = restore(repo, sid, target)
            assert result.code == 0, result.stderr[-2000:]
            assert_restored_exactly(target, src, expected)
            shutil.rmtree(target)
        shutil.rmtree(work)
    return stats


@pytest.mark.parametrize("mode", ["real-program", "small-packs"])
def test_sigkill_at_random_moments(tmp_path: Path, mode: str) -> None:
    stats = _random_kill_rounds(tmp_path, _Mode(mode), rounds=1, kills=5, seed=SEED)
    assert stats["killed"] >= 2, f"too few kills landed while the backup ran: {stats}"


@soak_only
@pytest.mark.parametrize("mode", ["real-program", "small-packs"])
def test_sigkill_at_random_moments_soak(tmp_path: Path, mode: str) -> None:
    kills = soak_count("kills", 200)
    per_round = 5
    stats = _random_kill_rounds(
        tmp_path, _Mode(mode), rounds=max(1, kills // per_round), kills=per_round, seed=SEED
    )
    print(f"R1 soak {mode}: {dict(stats)} (seed {SEED})")
    assert stats["killed"] >= kills // 2, stats


# --- kills at each named step ---------------------------------------------------------

NEW_FILES, NEW_SIZE = 6, 2 << 20


def _kill_at_step(tmp_path: Path, step: str, nth: int, *, must_reach: bool = True) -> bool:
    """Kill a backup at the ``nth`` time it reaches ``step``; False if it never did."""
    rng = random.Random(SEED + nth)
    src = tmp_path / "src"
    _base_tree(src, rng)
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    _new_data(src, rng, 1, 300_000)
    first = backup(repo, src)["snapshot_id"]
    first_manifest = manifest(src)
    new_bytes = _new_data(src, rng, NEW_FILES, NEW_SIZE)
    current = manifest(src)
    durable_before = _indexed(repo)

    child = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "backup",
            "--repo",
            str(repo),
            "--client",
            "rel",
            "--pack-size",
            str(SMALL_PACK),
            "--checkpoint-packs",
            "2",
            "--kill-at",
            step,
            "--kill-nth",
            str(nth),
            str(src),
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if not must_reach and child.returncode == 0:
        return False
    assert child.returncode == -signal.SIGKILL, (
        f"the backup never reached {step} #{nth}: exit {child.returncode}\n"
        + child.stderr.decode()[-2000:]
    )

    ids = snapshot_ids(repo)
    if step == "snapshot-written":
        assert len(ids) == 2 and first in ids, ids
    else:
        assert ids == [first], f"a snapshot appeared although the run died at {step}: {ids}"
    assert_check_ok(repo, f"after a kill at {step} #{nth}")
    for sid in ids:
        target = tmp_path / f"t-{sid[:8]}"
        result = restore(repo, sid, target)
        assert result.code == 0, result.stderr[-2000:]
        assert_restored_exactly(target, src, first_manifest if sid == first else current)
        shutil.rmtree(target)

    durable = {k: v for k, v in _indexed(repo).items() if k not in durable_before}
    durable_data = sum(raw for kind, raw in durable.values() if kind == DATA)
    if step == "pack-written" and nth == 1:
        assert durable_data == 0, "a pack without an index file must not count as stored"
    if step == "index-written":
        assert durable_data > 0, "the index checkpoint made nothing durable"
    if step in ("before-snapshot", "snapshot-written"):
        assert durable_data == new_bytes, (durable_data, new_bytes)

    doc = backup(repo, src)
    must_resend = new_bytes - durable_data
    assert must_resend <= doc["bytes_new"] <= must_resend + METADATA_SLACK, (
        f"after a kill at {step} #{nth}, {durable_data} of {new_bytes} new bytes were "
        f"indexed, so the next backup should store about {must_resend} bytes; "
        f"it stored {doc['bytes_new']}"
    )
    assert_check_ok(repo, f"after the backup that followed a kill at {step} #{nth}")
    target = tmp_path / "t-latest"
    result = restore(repo, doc["snapshot_id"], target)
    assert result.code == 0, result.stderr[-2000:]
    assert_restored_exactly(target, src, current)
    return True


@pytest.mark.parametrize(
    ("step", "nth"),
    [
        ("pack-written", 1),
        ("pack-written", 7),
        ("index-written", 1),
        ("index-written", 3),
        ("before-snapshot", 1),
        ("snapshot-written", 1),
    ],
)
def test_sigkill_at_named_step(tmp_path: Path, step: str, nth: int) -> None:
    _kill_at_step(tmp_path, step, nth)


@soak_only
@pytest.mark.parametrize("step", ["pack-written", "index-written"])
def test_sigkill_at_every_occurrence_of_step_soak(tmp_path: Path, step: str) -> None:
    # Every pack upload (or index checkpoint) of one run, until the run gets through.
    nth = 1
    while _kill_at_step(tmp_path / f"{step}-{nth}", step, nth, must_reach=False):
        shutil.rmtree(tmp_path / f"{step}-{nth}")
        nth += 1
    assert nth > 5, f"only {nth - 1} occurrences of {step}"
