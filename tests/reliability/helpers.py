"""Shared tools of the reliability suite: loop sizes, source trees, repository surgery,
and the one rule every fault test ends with: nothing wrong is ever restored.

Loop sizes come from the environment, read when this module is imported (the autouse
fixture of tests/conftest.py removes every ``STRONGROOM_*`` variable from each test's
environment, so tests cannot read them later):

    STRONGROOM_SOAK=1   run the ``soak``-marked variants (scripts/soak.sh sets it), and
                        scale every loop to its soak size.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import Result, cli

SOAK = os.environ.get("STRONGROOM_SOAK", "") not in ("", "0")
# A fixed seed by default so a failure can be replayed; soak runs draw a new one,
# printed by each test (pytest shows it on failure) and settable for a replay.
SEED = int(os.environ.get("STRONGROOM_SOAK_SEED", "0") or 0) or (
    int.from_bytes(os.urandom(4), "little") if SOAK else 20_251_125
)

F = TypeVar("F", bound=Callable[..., Any])


def soak_only(func: F) -> F:
    """A soak-size variant: marked ``soak``, and skipped unless STRONGROOM_SOAK=1."""
    func = pytest.mark.skipif(not SOAK, reason="soak only: run scripts/soak.sh")(func)
    return pytest.mark.timeout(0)(pytest.mark.soak(func))  # type: ignore[no-any-return]


# Read now: each test runs with every STRONGROOM_* variable removed.
_SOAK_ENV = {k: v for k, v in os.environ.items() if k.startswith("STRONGROOM_SOAK_")}


def soak_count(name: str, default: int) -> int:
    """A soak loop size, overridable as STRONGROOM_SOAK_<NAME>."""
    return int(_SOAK_ENV.get(f"STRONGROOM_SOAK_{name.upper()}", "") or default)


# --- source trees -------------------------------------------------------------------


def write_tree(
    root: Path,
    rng: random.Random,
    *,
    files: int,
    sizes: Iterable[int] = (0, 10, 700, 5_000, 40_000),
    big: int = 0,
    big_size: int = 4 << 20,
    prefix: str = "f",
) -> int:
    """A tree of ``files`` small files (half random, half compressible text) in nested
    directories, plus ``big`` random files of ``big_size`` bytes. Returns bytes written."""
    sizes = list(sizes)
    total = 0
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / f"d{i % 7}" / f"e{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.choice(sizes)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = (f"{prefix}{i} line of text\n" * (size // 16 + 1)).encode()[:size]
        (sub / f"{prefix}{i}").write_bytes(data)
        total += size
    for i in range(big):
        (root / f"big-{prefix}{i}").write_bytes(rng.randbytes(big_size))
        total += big_size
    return total


# Files older than this (2020) are ones the files cache trusts (not written just now).
OLD_NS = 1_600_000_000 * 10**9


def dirs_of_files(root: Path, dirs: int, files: int, rng: random.Random, max_size: int) -> None:
    """``dirs`` directories ``d00``... of ``files`` random files ``f0``... each (10 to
    ``max_size`` bytes); ``age_tree`` it once everything is written."""
    for d in range(dirs):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f:02}").write_bytes(rng.randbytes(rng.randrange(10, max_size)))


def age_tree(root: Path) -> None:
    """Give ``root`` and everything below it times the files cache trusts."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


Manifest = dict[str, tuple[str, str]]


def manifest(root: Path) -> Manifest:
    """Relative path -> (kind, sha256 of content or link target) for a whole tree."""
    result: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", "")
            elif stat.S_ISREG(st.st_mode):
                result[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                result[rel] = ("other", "")
    return result


def restored_root(target: Path, src: Path) -> Path:
    """Where ``restore`` puts a backed-up directory: its absolute path under the target."""
    return target / src.resolve().relative_to("/")


def assert_restored_exactly(target: Path, src: Path, expected: Manifest) -> None:
    got = manifest(restored_root(target, src))
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])
    assert not (missing or extra or wrong), (
        f"restore differs: missing {missing[:10]}, extra {extra[:10]}, wrong {wrong[:10]}"
    )


def leftovers(root: Path) -> list[str]:
    """Temporary files a restore or backend left behind."""
    if not root.exists():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.name.startswith((".strongroom-tmp-", ".tmp-"))
    )


def assert_restore_safe(
    result: Result, target: Path, src: Path, expected: Manifest, *, whole: bool = False
) -> set[str]:
    """The rule of every damage test, for one ``restore`` run.

    Every restored file matches the original byte for byte; nothing appears that was
    not backed up; every file that is absent is named in an ``error:`` line (itself or
    a directory above it); the exit code is 13 when anything was left out, 0 otherwise.
    With ``whole``, the damage stopped the whole restore (exit 13, nothing written).
    Returns the relative paths that were not restored.
    """
    assert leftovers(target) == [], f"temporary files left in the target: {leftovers(target)}"
    root = restored_root(target, src)
    got = manifest(root) if root.exists() else {}
    extra = sorted(set(got) - set(expected))
    assert not extra, f"restore produced entries that were never backed up: {extra[:10]}"
    wrong = sorted(p for p in got if got[p] != expected[p] and got[p][0] != "dir")
    assert not wrong, f"WRONG BYTES restored (silent corruption): {wrong[:10]}"
    if whole:
        assert result.code == 13, (result.code, result.stderr)
        files = [p for p in got if got[p][0] != "dir"]
        assert not files, f"restored {files[:5]} from a snapshot it could not read"
        return {p for p, v in expected.items() if v[0] != "dir"}
    missing = {p for p, v in expected.items() if v[0] != "dir" and p not in got}
    error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    src_abs = src.resolve().as_posix()
    for rel in sorted(missing):
        full = f"{src_abs}/{rel}"
        parts = full.strip("/").split("/")
        candidates = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
        assert any(ln.startswith(f"error: {c}: ") for c in candidates for ln in error_lines), (
            f"{rel} was not restored and no error names it (or a directory above it):\n"
            + result.stderr[-3000:]
        )
    # A damaged tree of a directory with no files below it (an empty one) loses no
    # file, yet the restore cannot know that: it names the directory and exits 13.
    lost_dirs = {
        ln[len("error: ") :].split(": directory listing lost", 1)[0]
        for ln in error_lines
        if ": directory listing lost" in ln
    }
    parts = src_abs.strip("/").split("/")
    above = {"/"} | {"/" + "/".join(parts[: i + 1]) for i in range(len(parts))}
    expected_dirs = {f"{src_abs}/{p}" for p, v in expected.items() if v[0] == "dir"} | above
    assert lost_dirs <= expected_dirs, f"listings lost of unknown directories: {lost_dirs}"
    expected_code = 13 if missing or lost_dirs else 0
    assert result.code == expected_code, (
        f"restore exit {result.code}, expected {expected_code} "
        f"({len(missing)} file(s) not restored)\n{result.stderr[-3000:]}"
    )
    return missing


# --- the repository on disk ---------------------------------------------------------


def repo_objects(repo: Path) -> dict[str, list[Path]]:
    """The repository's objects by kind: pack, index, snapshot, key, config."""
    kinds = {"data": "pack", "index": "index", "snapshots": "snapshot", "keys": "key"}
    result: dict[str, list[Path]] = {k: [] for k in ("pack", "index", "snapshot", "key")}
    for top, kind in kinds.items():
        base = repo / top
        if base.is_dir():
            result[kind] = sorted(
                p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
            )
    result["config"] = [repo / "config"]
    return result


def content_addressed_mismatches(repo: Path) -> list[str]:
    """Objects under data/, index/, snapshots/, keys/ whose bytes do not hash to their name."""
    bad = []
    for kind, paths in repo_objects(repo).items():
        if kind == "config":
            continue
        for path in paths:
            if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
                bad.append(path.relative_to(repo).as_posix())
    return bad


def flip_bit(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))
    evict(path)


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache, so the next read comes from the disk, as a
    restore's of packs written long ago does (and goes around the cache: see
    engine/direct.py)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def copy_repo(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


# --- the CLI ------------------------------------------------------------------------


def cli_json(*args: str) -> tuple[Result, dict[str, Any]]:
    """Run with --json; return the result and its last JSON document (the summary)."""
    result = cli("--json", *args)
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert lines, f"no JSON output (exit {result.code}): {result.stderr[-2000:]}"
    return result, json.loads(lines[-1])


def check(repo: Path, *extra: str) -> tuple[Result, dict[str, Any]]:
    return cli_json("--repo", str(repo), "check", "--read-data", *extra)


def assert_check_ok(repo: Path, when: str = "") -> dict[str, Any]:
    result, doc = check(repo)
    assert result.code == 0 and doc.get("ok"), (
        f"check --read-data failed {when}: exit {result.code}: "
        f"{json.dumps(doc.get('errors', doc), indent=1)[:3000]}"
    )
    return doc


def backup(repo: Path, src: Path, client: str = "rel", *extra: str) -> dict[str, Any]:
    """A backup that must succeed (exit 0); returns its JSON summary."""
    result, doc = cli_json("--repo", str(repo), "backup", "--client", client, *extra, str(src))
    assert result.code == 0, f"backup failed: exit {result.code}: {result.stderr[-3000:]}"
    assert doc["type"] == "summary" and doc["snapshot_id"], doc
    return doc


def restore(repo: Path, snapshot: str, target: Path, *extra: str) -> Result:
    return cli("--repo", str(repo), "restore", snapshot, "--target", str(target), *extra)


def snapshot_ids(repo: Path) -> list[str]:
    """Committed snapshots (not the temporary files an interrupted write leaves)."""
    base = repo / "snapshots"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".tmp-"))
