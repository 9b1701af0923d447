#!/usr/bin/env python3
"""Benchmark strongroom against restic and borg, side by side, on the same data.

One run copies the data set once into a work directory (default /tmp/strongroom-bench),
makes a second copy with 2% of its files changed (seeded, so every run changes the same
files the same way), and then, for each tool in turn, times these steps:

1. first backup of the data (client/host ``web01``)
2. unchanged re-backup of the same data
3. backup of the changed copy as another client (``web02``), into the same repository
4. restore of the latest ``web01`` snapshot into an empty directory (verified, untimed)
5. structure check of the repository (no data read)
6. full data check (``--read-data`` / ``--verify-data``), unless ``--no-read-data``

For every step it records the wall time, the CPU time and peak RSS of the tool's process
(from ``os.wait4``, so the harness itself is not counted) and the repository size after
the step. The results are printed as tables, with ratios to restic, and written to
``bench/results/NAME.md`` and ``NAME.json``.

Python 3.11 standard library only. Run ``python3 bench/bench.py --help`` for the options;
``make bench`` and ``make bench-quick`` are the usual entry points.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/strongroom-bench")
DEFAULT_DATA = ["/usr/share", "/usr/local", "/usr/lib/x86_64-linux-gnu"]
QUICK_DATA = ["/usr/share/doc", "/usr/lib/python3*"]
ALL_TOOLS = ["strongroom", "restic", "borg"]
BASELINE = "restic"

PASSWORD = "strongroom-bench-not-a-secret"
MARKER = ".strongroom-bench"  # marks a directory this script may wipe
CHANGE_FRACTION = 0.02
CHANGE_SEED = 20261125
DEFAULT_STEP_TIMEOUT = 4 * 3600


# --- steps and tools ------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    after_failure: bool  # still run it when an earlier step of the same tool failed


STEPS = [
    Step("backup-1", "1. first backup (web01)", after_failure=False),
    Step("backup-2", "2. unchanged re-backup (web01)", after_failure=False),
    Step("backup-web02", "3. copy with 2% changed (web02)", after_failure=False),
    Step("restore", "4. restore latest web01", after_failure=True),
    Step("check", "5. check (structure)", after_failure=True),
    Step("check-read-data", "6. check, read all data", after_failure=True),
]


@dataclass
class Layout:
    """Where everything lives inside the work directory."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_web02(self) -> Path:
        return self.root / "data-web02"

    def repo(self, tool: str) -> Path:
        return self.root / "repos" / tool

    def cache(self, tool: str) -> Path:
        return self.root / "cache" / tool

    def restore(self, tool: str, round_no: int) -> Path:
        return self.root / "restore" / tool / f"round-{round_no + 1}"

    def logs(self) -> Path:
        return self.root / "logs"

    def home(self) -> Path:
        return self.root / "home"

    def tmp(self) -> Path:
        return self.root / "tmp"


class Tool:
    """How to drive one backup program. Subclasses fill in the command lines."""

    name = ""
    warning_codes: frozenset[int] = frozenset()  # exit codes that mean "done, with warnings"

    def __init__(self, exe: str, layout: Layout) -> None:
        self.exe = exe
        self.layout = layout
        self.repo = layout.repo(self.name)

    def env(self) -> dict[str, str]:
        """A clean environment: no inherited tool settings; home, cache, tmp in the workdir."""
        prefixes = ("STRONGROOM_", "RESTIC_", "BORG_", "XDG_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env.update(
            HOME=str(self.layout.home()),
            TMPDIR=str(self.layout.tmp()),
            XDG_CACHE_HOME=str(self.layout.home() / ".cache"),
            XDG_CONFIG_HOME=str(self.layout.home() / ".config"),
            XDG_DATA_HOME=str(self.layout.home() / ".local" / "share"),
        )
        env.update(self.tool_env())
        return env

    def tool_env(self) -> dict[str, str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Untimed set-up before the first round (nothing for a compiled program)."""

    def init(self) -> list[str]:
        raise NotImplementedError

    def backup(self, client: str, seq: int, paths: list[Path]) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> tuple[list[str], Path | None]:
        """The restore command and the directory to run it in."""
        raise NotImplementedError

    def check(self, read_data: bool) -> list[str]:
        raise NotImplementedError


def script_interpreter(exe: str) -> str | None:
    """The interpreter a script's ``#!`` line names (directly or through ``env``),
    when it is a Python one."""
    try:
        with open(exe, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    words = first[2:].split() if first.startswith(b"#!") else []
    if words and os.path.basename(words[0]) == b"env":
        words = words[1:]
    if not words or b"python" not in os.path.basename(words[0]):
        return None
    return os.fsdecode(words[0])


class Strongroom(Tool):
    name = "strongroom"
    warning_codes = frozenset({3})

    def tool_env(self) -> dict[str, str]:
        # STRONGROOM_INSECURE_TEST_KDF is deliberately absent: benchmark the real KDF.
        return {
            "STRONGROOM_PASSWORD": PASSWORD,
            "STRONGROOM_CACHE_DIR": str(self.layout.cache(self.name)),
        }

    def prepare(self) -> None:
        """Compile strongroom's bytecode, as installing a package does: an editable
        install (the README's) writes it on first use, but not where the environment
        says PYTHONDONTWRITEBYTECODE (this harness's sandbox did), and every command
        then compiled its ~200 modules again (~0.1-0.2 s each time)."""
        interpreter = script_interpreter(self.exe)
        if interpreter is None:
            return
        code = (
            "import compileall, os, strongroom; "
            "compileall.compile_dir(os.path.dirname(strongroom.__file__), quiet=1)"
        )
        subprocess.run([interpreter, "-c", code], env=self.env(), check=True)

    def version(self) -> str:
        out = capture([self.exe, "--version"], env=self.env())
        version = out.strip().splitlines()[0] if out.strip() else "unknown"
        return f"{version} ({git_description()})"

    def _base(self) -> list[str]:
        return [self.exe, "--repo", str(self.repo), "--no-progress"]

    def init(self) -> list[str]:
        return [*self._base(), "init"]

    def backup(self, client: str, seq: int, paths: list[Path]) -> list[str]:
        return [*self._base(), "--json", "backup", "--client", client, *map(str, paths)]

    def restore(self, target: Path) -> tuple[list[str], Path | None]:
        cmd = [*self._base(), "restore", "latest", "--client", "web01", "--target", str(target)]
        return cmd, None

    def check(self, read_data: bool) -> list[str]:
        return [*self._base(), "check", *(["--read-data"] if read_data else [])]


class Restic(Tool):
    name = "restic"
    warning_codes = frozenset({3})  # "snapshot created, but some files could not be read"

    def tool_env(self) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(self.layout.cache(self.name)),
        }

    def version(self) -> str:
        return capture([self.exe, "version"], env=self.env()).strip()

    def init(self) -> list[str]:
        return [self.exe, "-r", str(self.repo), "--quiet", "init"]

    def backup(self, client: str, seq: int, paths: list[Path]) -> list[str]:
        # --json --quiet: only the final summary line on stdout. Compression: default (auto).
        return [
            self.exe,
            "-r",
            str(self.repo),
            "--json",
            "--quiet",
            "backup",
            "--host",
            client,
            *map(str, paths),
        ]

    def restore(self, target: Path) -> tuple[list[str], Path | None]:
        cmd = [self.exe, "-r", str(self.repo), "--quiet", "restore", "latest"]
        return [*cmd, "--host", "web01", "--target", str(target)], None

    def check(self, read_data: bool) -> list[str]:
        cmd = [self.exe, "-r", str(self.repo), "--quiet", "check"]
        return [*cmd, *(["--read-data"] if read_data else [])]


class Borg(Tool):
    name = "borg"
    warning_codes = frozenset({1})  # borg 1.x: rc 1 is "warning"

    def tool_env(self) -> dict[str, str]:
        return {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.layout.cache(self.name) / "base"),
            "BORG_CACHE_DIR": str(self.layout.cache(self.name) / "cache"),
        }

    def version(self) -> str:
        return capture([self.exe, "--version"], env=self.env()).strip()

    def init(self) -> list[str]:
        return [self.exe, "init", "--encryption=repokey-blake2", str(self.repo)]

    def backup(self, client: str, seq: int, paths: list[Path]) -> list[str]:
        archive = f"{self.repo}::{client}-{seq}"
        return [self.exe, "create", "--compression", "zstd,3", archive, *map(str, paths)]

    def restore(self, target: Path) -> tuple[list[str], Path | None]:
        # borg extract writes into the current directory; web01-2 is web01's latest archive.
        return [self.exe, "extract", f"{self.repo}::web01-2"], target

    def check(self, read_data: bool) -> list[str]:
        # Structure: --archives-only (archive metadata + every referenced chunk is in the
        # index), the counterpart of `restic check`. Plain `borg check` would also read
        # every segment for its CRC. Read-data: --verify-data decrypts and verifies all.
        flag = "--verify-data" if read_data else "--archives-only"
        return [self.exe, "check", flag, str(self.repo)]


TOOL_CLASSES: dict[str, type[Tool]] = {"strongroom": Strongroom, "restic": Restic, "borg": Borg}


def find_executable(tool: str, override: str | None) -> str:
    if override:
        return override
    if tool == "strongroom":
        venv = REPO_ROOT / ".venv" / "bin" / "strongroom"
        if venv.exists():
            return str(venv)
    exe = shutil.which(tool)
    if exe is None:
        raise SystemExit(f"bench: {tool} not found on PATH")
    return exe


# --- measurements ---------------------------------------------------------------------


@dataclass
class Measurement:
    tool: str
    step: str
    title: str
    status: str  # ok, warning, failed, timeout, skipped
    command: list[str] = field(default_factory=list)
    cwd: str | None = None
    exit_code: int | None = None
    wall_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    max_rss_kib: int | None = None
    # Peak of the summed PSS of the tool's processes (a forked worker shares pages with
    # its parent: adding RSS up would count them twice), sampled every PSS_INTERVAL.
    peak_pss_kib: int | None = None
    repo_apparent_bytes: int | None = None
    repo_allocated_bytes: int | None = None
    stdout_log: str | None = None
    stderr_log: str | None = None
    load_before: float | None = None  # 1-minute load average just before the step
    note: str = ""
    summary: dict[str, Any] | None = None

    @property
    def cpu_s(self) -> float | None:
        if self.cpu_user_s is None or self.cpu_sys_s is None:
            return None
        return self.cpu_user_s + self.cpu_sys_s


@dataclass
class ChildResult:
    exit_code: int
    wall_s: float
    usage: Any  # resource.struct_rusage from os.wait4
    timed_out: bool
    peak_pss_kib: int | None = None


# The sampler reads only the tool's process and its descendants. It used to find the
# process group by reading every /proc/N/stat on the machine (~90 processes here)
# every 50 ms, which took CPU from the tool: strongroom's first backup averaged 8.67 s
# with that sampler against 8.15 s without it (four alternations; restic's showed no
# difference in two). Reading the tool's own tree every 50 ms: 8.45-9.35 s against
# 8.61-9.12 s without, no difference measurable through this VM's noise.
PSS_INTERVAL = 0.05


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/PID/task/TID/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue  # gone meanwhile
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
            except (OSError, ValueError):
                continue
    return found


def group_pss_kib(pid: int) -> int:
    """The summed PSS of a process and its descendants (KiB)."""
    total = 0
    for member in descendants(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        break
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


class PssSampler(threading.Thread):
    """Samples the summed PSS of a process and its descendants until stopped; keeps
    the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, group_pss_kib(self.pid))
            self._stop_event.wait(PSS_INTERVAL)

    def stop(self) -> int | None:
        self._stop_event.set()
        self.join()
        return self.peak or None


def run_child(
    cmd: list[str], *, env: dict[str, str], cwd: Path | None, log_base: Path, timeout: float
) -> ChildResult:
    """Run one command, output to log files; wall time and rusage of that child only."""
    out_path, err_path = log_paths(log_base)
    timed_out = threading.Event()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so a timeout kills it all
        )

        def kill() -> None:
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        sampler = PssSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
            peak_pss = sampler.stop()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by us, not by Popen
    return ChildResult(proc.returncode, wall, usage, timed_out.is_set(), peak_pss)


def log_paths(log_base: Path) -> tuple[Path, Path]:
    return log_base.with_suffix(".out"), log_base.with_suffix(".err")


def capture(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return proc.stdout or proc.stderr


def tree_size(path: Path) -> tuple[int, int]:
    """(apparent, allocated): sum of st_size of regular files; st_blocks*512 of all entries."""
    apparent = allocated = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            allocated += st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                apparent += st.st_size
    return apparent, allocated


def load_average() -> float:
    """The 1-minute load average: other work on the machine makes wall times noisy."""
    return os.getloadavg()[0]


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (root only). True if it worked."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def last_json_line(path: Path) -> dict[str, Any] | None:
    """The last JSON object line of a log (a backup's summary), if any."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


# --- data preparation -----------------------------------------------------------------


@dataclass
class DataStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    other: int = 0
    bytes: int = 0


def expand_sources(patterns: list[str]) -> list[Path]:
    sources: list[Path] = []
    for pattern in patterns:
        magic = any(c in pattern for c in "*?[")
        matches = sorted(glob.glob(pattern)) if magic else [pattern]
        if not matches:
            raise SystemExit(f"bench: --data {pattern!r} matches nothing")
        for match in matches:
            path = Path(os.path.abspath(match))
            if not path.is_dir():
                raise SystemExit(f"bench: data source {path} is not a directory")
            sources.append(path)
    for a in sources:
        for b in sources:
            if a != b and a.is_relative_to(b):
                raise SystemExit(f"bench: data sources overlap: {a} is inside {b}")
    return sources


def copy_sources(sources: list[Path], dest_root: Path) -> list[Path]:
    """Copy each source to dest_root/<its absolute path>; returns the copies."""
    copies = []
    for src in sources:
        dest = dest_root / str(src).lstrip("/")
        dest.mkdir(parents=True)
        # SRC/. copies the contents (following SRC itself if it is a symlink)
        subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)
        copies.append(dest)
    return copies


def walk_entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), os.lstat(full)


def data_stats(root: Path) -> DataStats:
    stats = DataStats()
    for _, st in walk_entries(root):
        if stat.S_ISREG(st.st_mode):
            stats.files += 1
            stats.bytes += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            stats.dirs += 1
        elif stat.S_ISLNK(st.st_mode):
            stats.symlinks += 1
        else:
            stats.other += 1
    return stats


def change_files(root: Path, fraction: float, seed: int) -> dict[str, int]:
    """Change `fraction` of the regular files under root, deterministically (seeded).

    Half (at random) get 1-4096 random bytes appended; the others get 1-4096 bytes
    overwritten at a random offset (empty files are always appended to).
    """
    files = sorted(rel for rel, st in walk_entries(root) if stat.S_ISREG(st.st_mode))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(files, max(1, round(fraction * len(files)))))
    appended = overwritten = changed_bytes = 0
    for rel in chosen:
        path = root / rel
        size = path.stat().st_size
        count = rng.randint(1, 4096)
        if size == 0 or rng.random() < 0.5:
            with path.open("ab") as f:
                f.write(rng.randbytes(count))
            appended += 1
        else:
            count = min(count, size)
            offset = rng.randrange(0, size - count + 1)
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(rng.randbytes(count))
            overwritten += 1
        changed_bytes += count
    return {
        "files_total": len(files),
        "files_changed": len(chosen),
        "appended": appended,
        "overwritten": overwritten,
        "bytes_written": changed_bytes,
    }


def prepare_workdir(root: Path) -> None:
    """Create the work directory; wipe it only if an earlier run of this script made it."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(
                f"bench: {root} exists, is not empty and was not made by bench.py; "
                "pass another --workdir or empty it"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("created by bench/bench.py; deleted at the end unless --keep\n")


# --- verification ---------------------------------------------------------------------


def manifest(root: Path) -> dict[str, tuple[str, int | str]]:
    """Type and size (files) or target (symlinks) of every entry below root."""
    result: dict[str, tuple[str, int | str]] = {}
    for rel, st in walk_entries(root):
        if stat.S_ISREG(st.st_mode):
            result[rel] = ("file", st.st_size)
        elif stat.S_ISLNK(st.st_mode):
            result[rel] = ("symlink", os.readlink(root / rel))
        elif stat.S_ISDIR(st.st_mode):
            result[rel] = ("dir", 0)
        else:
            result[rel] = ("other", 0)
    return result


def verify_restore(original: Path, restored: Path, content_diff: bool) -> tuple[bool, str]:
    """Compare the restored tree with the original: entries, sizes, then `diff -r`."""
    if not restored.is_dir():
        return False, f"nothing restored at {restored}"
    want, got = manifest(original), manifest(restored)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    files = sum(1 for kind, _ in want.values() if kind == "file")
    size = sum(int(v) for kind, v in want.values() if kind == "file")
    if missing or extra or differ:
        parts = [
            f"{label} {len(items)} (e.g. {', '.join(items[:3])})"
            for label, items in (("missing", missing), ("extra", extra), ("differ", differ))
            if items
        ]
        return False, "manifest mismatch: " + "; ".join(parts)
    detail = f"{len(want)} entries, {files} files, {size} bytes match"
    if content_diff:
        proc = subprocess.run(
            ["diff", "-r", "-q", "--no-dereference", str(original), str(restored)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            return False, f"diff -r found {len(lines)} differences, e.g. {lines[:3]}"
        detail += "; diff -r identical"
    return True, f"{detail}; {metadata_differences(original, restored)}"


def metadata_differences(original: Path, restored: Path) -> str:
    """Count regular files whose mode, owner or mtime was not restored (informational)."""
    counts = {"mode": 0, "owner": 0, "mtime": 0}
    for rel, st in walk_entries(original):
        if not stat.S_ISREG(st.st_mode):
            continue
        got = os.lstat(restored / rel)
        counts["mode"] += stat.S_IMODE(st.st_mode) != stat.S_IMODE(got.st_mode)
        counts["owner"] += (st.st_uid, st.st_gid) != (got.st_uid, got.st_gid)
        counts["mtime"] += st.st_mtime_ns != got.st_mtime_ns
    if not any(counts.values()):
        return "file mode, owner and mtime (ns) all restored"
    return "files with metadata not restored: " + ", ".join(f"{k} {v}" for k, v in counts.items())


# --- the run --------------------------------------------------------------------------


@dataclass
class Context:
    layout: Layout
    paths_web01: list[Path]
    paths_web02: list[Path]
    drop: bool
    timeout: float
    content_diff: bool
    keep: bool
    # When many files were last deleted (the old work directory).
    deleted_at: float = 0.0
    round_no: int = 0


# ext4 without a journal (this machine's root) will not reuse an inode freed less than
# 60 s ago, 360 s when its inode table block is dirty (as a restore creating files next
# to it makes it): right after a big deletion, creating files costs far more system
# time. So restores are kept until the run ends, and the first restore waits until the
# old work directory was deleted that long ago: every tool restores in the same state.
INODE_REUSE_WINDOW = 361.0


def init_tool(tool: Tool, ctx: Context) -> bool:
    """Initialise the tool's repository; False (and a failure recorded) when that failed."""
    init_log = ctx.layout.logs() / f"{tool.name}-init"
    init = run_child(tool.init(), env=tool.env(), cwd=None, log_base=init_log, timeout=ctx.timeout)
    if init.exit_code != 0:
        out, err = log_paths(init_log)
        fail(f"{tool.name} init failed with exit code {init.exit_code}; see {err} and {out}")
        return False
    return True


def run_round(tools: list[Tool], ctx: Context, steps: list[Step]) -> dict[str, list[Measurement]]:
    """One round: every tool's repository initialised, then each step run by every tool
    in turn (in ``tools``' order) before the next step, so a tool's figures and
    restic's for the same step are taken within a minute or two of each other, not a
    whole tool's run apart (this VM drifts by ±10% over minutes)."""
    ready = {tool.name: init_tool(tool, ctx) for tool in tools}
    results: dict[str, list[Measurement]] = {tool.name: [] for tool in tools}
    failed = {tool.name: not ready[tool.name] for tool in tools}
    for step in steps:
        for tool in tools:
            if not ready[tool.name]:
                m = Measurement(tool.name, step.key, step.title, "skipped: init failed")
            elif failed[tool.name] and not step.after_failure:
                m = Measurement(tool.name, step.key, step.title, "skipped: earlier step failed")
            else:
                m = run_step(tool, step, ctx, tool.env())
            failed[tool.name] = failed[tool.name] or m.status in ("failed", "timeout")
            results[tool.name].append(m)
            print_progress(m)
    return results


def step_command(tool: Tool, step: Step, ctx: Context) -> tuple[list[str], Path | None]:
    if step.key == "backup-1":
        return tool.backup("web01", 1, ctx.paths_web01), None
    if step.key == "backup-2":
        return tool.backup("web01", 2, ctx.paths_web01), None
    if step.key == "backup-web02":
        return tool.backup("web02", 1, ctx.paths_web02), None
    if step.key == "restore":
        target = ctx.layout.restore(tool.name, ctx.round_no)
        target.mkdir(parents=True)
        wait = ctx.deleted_at + INODE_REUSE_WINDOW - time.monotonic()
        if wait > 0:
            print(f"bench: waiting {wait:.0f} s before restoring (see INODE_REUSE_WINDOW)")
            time.sleep(wait)
        return tool.restore(target)
    if step.key == "check":
        return tool.check(read_data=False), None
    if step.key == "check-read-data":
        return tool.check(read_data=True), None
    raise ValueError(step.key)


def run_step(tool: Tool, step: Step, ctx: Context, env: dict[str, str]) -> Measurement:
    cmd, cwd = step_command(tool, step, ctx)
    log_base = ctx.layout.logs() / f"{tool.name}-{step.key}"
    if ctx.drop:
        drop_caches()
    load = load_average()
    child = run_child(cmd, env=env, cwd=cwd, log_base=log_base, timeout=ctx.timeout)
    out, err = log_paths(log_base)
    usage = child.usage
    m = Measurement(
        tool=tool.name,
        step=step.key,
        title=step.title,
        status="ok",
        command=cmd,
        cwd=str(cwd) if cwd else None,
        exit_code=child.exit_code,
        wall_s=child.wall_s,
        cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,  # KiB on Linux
        peak_pss_kib=child.peak_pss_kib,
        stdout_log=str(out),
        stderr_log=str(err),
        load_before=load,
    )
    m.repo_apparent_bytes, m.repo_allocated_bytes = tree_size(tool.repo)
    if step.key.startswith("backup"):
        m.summary = last_json_line(out)

    if child.timed_out:
        m.status = "timeout"
        m.note = f"killed after {ctx.timeout:.0f} s"
        fail(f"{tool.name} step '{step.title}' timed out after {ctx.timeout:.0f} s; see {err}")
    elif child.exit_code in tool.warning_codes:
        m.status = "warning"
        m.note = f"exit {child.exit_code} (warnings): {tail(err)}"
        print(
            f"bench: WARNING: {tool.name} step '{step.title}' exited {child.exit_code} "
            f"(warnings); see {err}",
            file=sys.stderr,
        )
    elif child.exit_code != 0:
        m.status = "failed"
        m.note = f"exit {child.exit_code}: {tail(err)}"
        fail(
            f"{tool.name} step '{step.title}' failed with exit code {child.exit_code}: "
            f"{tail(err)} (log: {err})"
        )

    if step.key == "restore" and m.status in ("ok", "warning"):
        restored = ctx.layout.restore(tool.name, ctx.round_no) / str(ctx.layout.data).lstrip("/")
        ok, detail = verify_restore(ctx.layout.data, restored, ctx.content_diff)
        verdict = ("verified: " if ok else "VERIFY FAILED: ") + detail
        m.note = f"{m.note}; {verdict}" if m.note else verdict
        if not ok:
            m.status = "failed"
            fail(f"{tool.name} restore did not reproduce the data: {detail}")
    return m


def tail(path: Path, limit: int = 300) -> str:
    """The last non-empty lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = text.splitlines()[-3:]
    return " | ".join(lines)[-limit:]


FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"bench: FAILED: {message}", file=sys.stderr, flush=True)


def print_progress(m: Measurement) -> None:
    if m.wall_s is None:
        print(f"  [{m.tool}] {m.title}: {m.status}", flush=True)
        return
    print(
        f"  [{m.tool}] {m.title}: {m.wall_s:.2f} s wall, {fmt_cpu(m)} s CPU, "
        f"{fmt_rss(m.max_rss_kib)} RSS, {fmt_rss(m.peak_pss_kib)} PSS, "
        f"repo {fmt_mib(m.repo_apparent_bytes)} "
        f"[{m.status}]{' - ' + m.note if m.note else ''}",
        flush=True,
    )


# --- reporting ------------------------------------------------------------------------


def fmt_mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def fmt_rss(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f} MiB"


def fmt_cpu(m: Measurement) -> str:
    return "-" if m.cpu_s is None else f"{m.cpu_s:.1f}"


def fmt_ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}x"


@dataclass(frozen=True)
class Metric:
    title: str
    value: Callable[[Measurement], float | int | None]
    fmt: Callable[[float], str]


METRICS = [
    Metric("Wall time (s)", lambda m: m.wall_s, lambda v: f"{v:.2f}"),
    Metric("CPU time, user+sys (s)", lambda m: m.cpu_s, lambda v: f"{v:.1f}"),
    Metric(
        "Peak RSS of the largest process (MiB; ru_maxrss)",
        lambda m: m.max_rss_kib,
        lambda v: f"{v / 1024:,.0f}",
    ),
    Metric(
        "Peak memory of all the tool's processes (MiB; summed PSS, sampled every 50 ms)",
        lambda m: m.peak_pss_kib,
        lambda v: f"{v / 1024:,.0f}",
    ),
    Metric(
        "Repository size after the step (bytes, apparent: sum of st_size of its files)",
        lambda m: m.repo_apparent_bytes,
        lambda v: f"{v:,}",
    ),
]


def metric_table(metric: Metric, results: dict[str, list[Measurement]], tools: list[str]) -> str:
    """One markdown table: a row per step, a column per tool, then ratios to restic."""
    others = [t for t in tools if t != BASELINE] if BASELINE in tools else []
    header = ["step", *tools, *(f"{t}/{BASELINE}" for t in others)]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]
    for step in STEPS:
        by_tool = {t: m for t in tools for m in results.get(t, []) if m.step == step.key}
        if not by_tool:
            continue
        values = {t: metric.value(m) if m.wall_s is not None else None for t, m in by_tool.items()}
        cells = [step.title]
        for t in tools:
            v = values.get(t)
            m = by_tool.get(t)
            cells.append(metric.fmt(v) if v is not None else (m.status if m else "-"))
        cells += [fmt_ratio(values.get(t), values.get(BASELINE)) for t in others]
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


DETAIL_COLUMNS = [
    ("tool", "---"),
    ("step", "---"),
    ("status", "---"),
    ("exit", "---:"),
    ("load", "---:"),
    ("wall s", "---:"),
    ("user s", "---:"),
    ("sys s", "---:"),
    ("RSS MiB", "---:"),
    ("PSS MiB", "---:"),
    ("repo apparent B", "---:"),
    ("repo allocated B", "---:"),
    ("note", "---"),
]


def detail_table(results: dict[str, list[Measurement]]) -> str:
    rows = [[name for name, _ in DETAIL_COLUMNS], [align for _, align in DETAIL_COLUMNS]]
    for tool_results in results.values():
        for m in tool_results:
            rows.append(
                [
                    m.tool,
                    m.title,
                    m.status,
                    str(m.exit_code) if m.exit_code is not None else "-",
                    f"{m.load_before:.2f}" if m.load_before is not None else "-",
                    f"{m.wall_s:.2f}" if m.wall_s is not None else "-",
                    f"{m.cpu_user_s:.1f}" if m.cpu_user_s is not None else "-",
                    f"{m.cpu_sys_s:.1f}" if m.cpu_sys_s is not None else "-",
                    f"{m.max_rss_kib / 1024:,.0f}" if m.max_rss_kib is not None else "-",
                    f"{m.peak_pss_kib / 1024:,.0f}" if m.peak_pss_kib is not None else "-",
                    f"{m.repo_apparent_bytes:,}" if m.repo_apparent_bytes is not None else "-",
                    f"{m.repo_allocated_bytes:,}" if m.repo_allocated_bytes is not None else "-",
                    m.note.replace("|", "\\|"),
                ]
            )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    mem_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_description() -> str:
    rev = capture(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).strip()
    dirty = capture(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src"]).strip()
    return f"git {rev}" + (", with uncommitted changes in src/" if dirty else "")


@dataclass
class Report:
    started: str
    command: str
    machine: dict[str, Any]
    versions: dict[str, str]
    sources: list[str]
    data: DataStats
    changes: dict[str, int]
    cache_mode: str
    tools: list[str]
    results: dict[str, list[Measurement]]
    failures: list[str]
    load_start: float = 0.0
    load_end: float | None = None
    finished: str = ""
    # With --rounds N: every round's measurements per tool; ``results`` holds, per
    # step, the round with the median wall time.
    rounds: int = 1
    all_rounds: dict[str, list[list[Measurement]]] = field(default_factory=dict)


def shorten(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def render_markdown(r: Report) -> str:
    d = r.data
    m = r.machine
    lines = [
        "# " + " vs ".join(r.tools),
        "",
        f"- Run: {r.started} to {r.finished or '(unfinished)'} (UTC)",
        f"- Command: `{r.command}`",
        f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        *(f"- {tool}: {version}" for tool, version in r.versions.items()),
        f"- Data: {shorten(r.sources)}: {d.files:,} files, {d.bytes:,} bytes "
        f"({d.bytes / 2**30:.2f} GiB), {d.dirs:,} dirs, {d.symlinks:,} symlinks",
        f"- Step 3 data: a copy with {r.changes.get('files_changed', 0):,} of "
        f"{r.changes.get('files_total', 0):,} files changed (seed {CHANGE_SEED}: "
        f"{r.changes.get('appended', 0)} appended to, {r.changes.get('overwritten', 0)} "
        f"partly overwritten, {r.changes.get('bytes_written', 0):,} bytes written)",
        f"- Page cache: {r.cache_mode}",
        *(
            [
                f"- Rounds: {r.rounds}, each on fresh repositories; within a round every "
                "step is run by each tool in turn before the next step, in a new order "
                "each round. Each figure is from the round with the median "
                "wall time for that tool and step (CPU, RSS and sizes from that same run); "
                "every round is in the JSON (`all_rounds`) and in the detail table."
            ]
            if r.rounds > 1
            else []
        ),
        "- Every restore goes to a directory of its own, kept until the run ends, and none "
        "starts within 361 s of the run's start (when the old work directory goes): ext4 "
        "without a journal skips inodes freed within the last 60 s (360 s when their inode "
        "table block is dirty, as creating files next to them makes it), which otherwise "
        "makes creating files slower for whoever restores after a deletion.",
        f"- Load average (1 min) at start {r.load_start:.2f}, at end "
        + (f"{r.load_end:.2f}" if r.load_end is not None else "-")
        + "; per step in the detail table. Other work on the machine inflates wall times; "
        "CPU time and RSS are less sensitive to it.",
        "- Peak RSS and CPU: `os.wait4` rusage of the tool's process (and any children it "
        "waited for; RSS is then the largest process's); the harness is not counted. Peak "
        "memory of all processes: the summed PSS (proportional set size, so pages a forked "
        "worker shares with its parent count once) of the tool's process and its "
        "descendants, sampled every 50 ms. Repository size: apparent (sum of st_size); "
        "the allocated size (st_blocks*512) is in the detail table and JSON. Caches "
        "(restic/borg/strongroom) live outside the repository and are not counted.",
        "- Settings: strongroom real KDF (no STRONGROOM_INSECURE_TEST_KDF), its bytecode "
        "compiled before the first round as an installed package has it; restic default "
        "compression (auto); borg repokey-blake2, zstd,3. Check = structure only "
        "(borg: --archives-only); step 6 reads all data (--read-data / borg --verify-data).",
        "",
    ]
    if r.failures:
        lines += ["## Failures", "", *(f"- {f}" for f in r.failures), ""]
    for metric in METRICS:
        lines += [f"## {metric.title}", "", metric_table(metric, r.results, r.tools), ""]
    every = r.results if r.rounds == 1 else _every_round(r)
    lines += ["## All measurements", "", detail_table(every), ""]
    lines += ["## Commands", ""]
    for tool_results in r.results.values():
        for meas in tool_results:
            if meas.command:
                where = f" (in {meas.cwd})" if meas.cwd else ""
                lines.append(f"- {meas.tool} {meas.step}: `{shlex.join(meas.command)}`{where}")
    return "\n".join(lines) + "\n"


def _every_round(r: Report) -> dict[str, list[Measurement]]:
    """All rounds' measurements per tool, in round order (for the detail table)."""
    return {tool: [m for round_ in rounds for m in round_] for tool, rounds in r.all_rounds.items()}


def median_round(rounds: list[list[Measurement]]) -> list[Measurement]:
    """Per step, the measurement with the median wall time among the rounds that
    succeeded (the lower of the two middle ones for an even count); a step that never
    succeeded keeps its first round's failure."""
    chosen: list[Measurement] = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds if i < len(r)]
        good = sorted(
            (m for m in runs if m.status in ("ok", "warning") and m.wall_s is not None),
            key=lambda m: m.wall_s or 0.0,
        )
        chosen.append(good[(len(good) - 1) // 2] if good else first)
    return chosen


def write_results(report: Report, name: str, results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = results_dir / f"{name}.md", results_dir / f"{name}.json"
    doc = asdict(report)
    everything = [*doc["results"].values()] + [
        r for rounds in doc["all_rounds"].values() for r in rounds
    ]
    for tool_results in everything:
        for item in tool_results:
            if item["cpu_user_s"] is not None and item["cpu_sys_s"] is not None:
                item["cpu_s"] = item["cpu_user_s"] + item["cpu_sys_s"]
    for path, text in ((md_path, render_markdown(report)), (json_path, json.dumps(doc, indent=2))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + ("" if text.endswith("\n") else "\n"))
        tmp.replace(path)
    return md_path, json_path


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        action="append",
        metavar="PATH",
        help="directory to back up (repeatable; globs allowed); default: "
        + ", ".join(DEFAULT_DATA),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small data set (" + ", ".join(QUICK_DATA) + "), results name latest-quick",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help=f"scratch directory (default {DEFAULT_WORKDIR}, or ...-quick); wiped first",
    )
    p.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help="comma-separated subset of " + ",".join(ALL_TOOLS),
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every tool's steps this many times (fresh repositories, tools in turn) "
        "and report each step's median-wall-time run (default %(default)s)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (data, repositories, restores, logs)",
    )
    for tool in ALL_TOOLS:
        p.add_argument(f"--{tool}", metavar="EXE", help=f"{tool} executable to use")
    p.add_argument("--name", help="results file name (default latest, or latest-quick)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--no-read-data", action="store_true", help="skip step 6 (check reading all data)"
    )
    p.add_argument(
        "--no-drop-caches",
        action="store_true",
        help="do not drop the page cache before each timed step",
    )
    p.add_argument(
        "--no-diff", action="store_true", help="verify restores by manifest only, without diff -r"
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=DEFAULT_STEP_TIMEOUT,
        help="kill a step after this many seconds (default %(default)s)",
    )
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(ALL_TOOLS)
    if unknown or not args.tools:
        p.error(f"--tools: unknown {sorted(unknown)}; choose from {ALL_TOOLS}")
    if args.data is None:
        args.data = QUICK_DATA if args.quick else DEFAULT_DATA
    if args.name is None:
        args.name = "latest-quick" if args.quick else "latest"
    if args.workdir is None:
        args.workdir = Path(f"{DEFAULT_WORKDIR}-quick") if args.quick else DEFAULT_WORKDIR
    return args


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = now()
    sources = expand_sources(args.data)
    root = args.workdir.resolve()
    layout = Layout(root)
    prepare_workdir(root)
    wiped_at = time.monotonic()
    for d in (layout.logs(), layout.home(), layout.tmp()):
        d.mkdir(parents=True, exist_ok=True)
    tools = {
        name: TOOL_CLASSES[name](find_executable(name, getattr(args, name)), layout)
        for name in args.tools
    }

    shown = ", ".join(map(str, sources[:5])) + (
        f" and {len(sources) - 5} more" if len(sources) > 5 else ""
    )
    print(f"bench: copying {shown} to {layout.data} ...", flush=True)
    paths_web01 = copy_sources(sources, layout.data)
    stats = data_stats(layout.data)
    print(f"bench: {stats.files:,} files, {stats.bytes / 2**30:.2f} GiB", flush=True)
    subprocess.run(["cp", "-a", str(layout.data), str(layout.data_web02)], check=True)
    changes = change_files(layout.data_web02, CHANGE_FRACTION, CHANGE_SEED)
    print(f"bench: changed {changes['files_changed']:,} files in {layout.data_web02}", flush=True)
    paths_web02 = [layout.data_web02 / p.relative_to(layout.data) for p in paths_web01]

    drop = not args.no_drop_caches and drop_caches()
    cache_mode = (
        "dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step"
        if drop
        else "warm: not dropped"
        + (" (--no-drop-caches)" if args.no_drop_caches else " (drop_caches not writable)")
    )
    print(f"bench: page cache {cache_mode}", flush=True)

    steps = [s for s in STEPS if not (args.no_read_data and s.key == "check-read-data")]
    ctx = Context(
        layout,
        paths_web01,
        paths_web02,
        drop,
        args.step_timeout,
        not args.no_diff,
        args.keep,
        deleted_at=wiped_at,
    )
    report = Report(
        started=started,
        command=f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, *sys.argv])}",
        machine=machine_info(),
        versions={name: tool.version() for name, tool in tools.items()},
        sources=[str(s) for s in sources],
        data=stats,
        changes=changes,
        cache_mode=cache_mode,
        tools=list(tools),
        results={},
        failures=FAILURES,
        load_start=load_average(),
    )
    report.rounds = max(1, args.rounds)
    for tool in tools.values():
        tool.prepare()
    names = list(tools)
    for round_no in range(report.rounds):
        # A new order each round: no tool always runs first (or right after another).
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        ctx.round_no = round_no
        for name in order:
            if round_no:  # a few hundred files each: no wait needed after these
                for old in (tools[name].repo, layout.cache(name)):
                    shutil.rmtree(old, ignore_errors=True)
        label = f"round {round_no + 1}/{report.rounds}: " if report.rounds > 1 else ""
        versions = "; ".join(report.versions[name] for name in order)
        print(f"bench: {label}{versions}", flush=True)
        for name, measured in run_round([tools[n] for n in order], ctx, steps).items():
            report.all_rounds.setdefault(name, []).append(measured)
            report.results[name] = median_round(report.all_rounds[name])
        write_results(report, args.name, args.results_dir)  # partial results survive
    if report.rounds == 1:
        report.all_rounds = {}  # the same as results
    report.finished = now()
    report.load_end = load_average()
    md_path, json_path = write_results(report, args.name, args.results_dir)

    print()
    print(render_markdown(report))
    print(f"bench: results in {md_path} and {json_path}")
    if FAILURES:
        print(f"bench: {len(FAILURES)} failure(s); work directory kept: {root}", file=sys.stderr)
        for message in FAILURES:
            print(f"bench: FAILED: {message}", file=sys.stderr)
        return 1
    if args.keep:
        print(f"bench: work directory kept: {root}")
    else:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
