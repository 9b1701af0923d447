"""The console script's first step: have the kernel read ahead the files a command
will import.

From a cold page cache (a nightly job on a busy server; the benchmark drops the cache
before every step) Python reads the ~220 files a backup imports one after another,
waiting for each: 0.19 s against 0.13 s warm on the benchmark's VM. So before
anything else is imported, a child is forked that asks the kernel to read those files
ahead (``posix_fadvise(WILLNEED)``) while this process goes on importing them: 0.14 s
then. The list is the files of the modules that earlier commands loaded (their union:
a first restore still finds most of what it needs), kept in the cache directory; a
first run, or one where the list cannot be read or written, simply goes without.

This module imports nothing but the standard library's ``os``, ``stat`` and ``sys``.
"""

from __future__ import annotations

import os
import stat
import sys

LIST_VERSION = "strongroom-readahead 1"
MODULE_SUFFIXES = (".pyc", ".py", ".so")
MAX_FILES = 10_000


def cache_dir() -> str:
    """strongroom's cache directory (files caches, the read-ahead list)."""
    if path := os.environ.get("STRONGROOM_CACHE_DIR"):
        return path
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "strongroom")


def _header() -> str:
    from strongroom import __version__

    return f"{LIST_VERSION} {__version__} {sys.version.split()[0]} {sys.prefix}"


def read_list(path: str) -> list[str]:
    """The files in a list written by ``remember`` for this installation, else none."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().split("\n")
    except (OSError, ValueError):
        return []
    if not lines or lines[0] != _header():
        return []
    return [line for line in lines[1 : MAX_FILES + 1] if line]


def read_ahead(files: list[str]) -> int | None:
    """Fork a child that asks for ``files`` to be read into the page cache; its pid.
    Call it only while this process has a single thread."""
    if not files or not hasattr(os, "posix_fadvise"):
        return None
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:
        try:
            # Not holding the command's output open: a caller reading it to the end
            # (a pipe, an ssh session for the agent) must not wait for this child.
            os.closerange(0, 3)
            for name in files:
                # Module files only: never a FIFO or a device (whose open can block or
                # act), whatever a damaged list says.
                if not name.endswith(MODULE_SUFFIXES):
                    continue
                try:
                    if not stat.S_ISREG(os.stat(name).st_mode):
                        continue
                    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        finally:
            os._exit(0)
    return pid


def loaded_files() -> set[str]:
    """The files of the modules loaded so far (compiled files for Python sources)."""
    from importlib.util import cache_from_source

    files: set[str] = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if not isinstance(name, str) or not os.path.isabs(name):
            continue
        if name.endswith(".py"):
            try:
                name = cache_from_source(name)
            except (NotImplementedError, ValueError):
                continue
        files.add(name)
    return files


def remember(path: str, known: list[str]) -> None:
    """Add this run's module files to the list at ``path`` when some are new to it."""
    files = loaded_files()
    listed = set(known)
    if files <= listed:
        return
    text = "\n".join([_header(), *sorted(files | listed)]) + "\n"
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def main() -> None:
    """The ``strongroom`` console script."""
    path = os.path.join(cache_dir(), "readahead")
    known = read_list(path)
    child = read_ahead(known)
    try:
        from strongroom.cli.main import main as cli_main

        cli_main()
    finally:
        try:
            remember(path, known)
        except Exception:  # only a speed-up: never what decides the exit code
            pass
        if child is not None:
            try:
                os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pass
