"""The directory scanner: in threads or in a process of its own, the same listings in
the walk's order, and a scanner that dies fails the backup cleanly.

A process may fork a scanner only while it has one thread, and a pytest-xdist worker
has two: the tests that need a scanner process run in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from strongroom.engine.archiver import BackupRequest, start_scan
from strongroom.engine.scan import TreeScanner

SETUP = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    from strongroom.backend import LocalBackend
    from strongroom.clock import SystemClock
    from strongroom.engine.archiver import Archiver, BackupRequest, start_scan
    from strongroom.engine.scan import TreeScanner
    from strongroom.engine.walk import walk
    from strongroom.engine.scanproc import ScanProcess
    from strongroom.errors import StrongroomError
    from strongroom.repository import TEST_KDF, Repository

    assert len(os.listdir("/proc/self/task")) == 1, "a fresh interpreter has one thread"
    top = Path(sys.argv[1])

    def walk_all(scanner, roots):
        seen = []

        def visit(path):
            listing = scanner.listing(path)
            seen.append((path, listing))
            for sub in listing.subdirectories(path):
                visit(sub)

        for root in roots:
            visit(root)
        return seen
    """
)


def _run(script: str, top: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SETUP + textwrap.dedent(script), str(top)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _tree(root: Path) -> None:
    for d in ("a", "a/b", "a/b/c", "a-b", "a0", "z", "z/y"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            (root / d / f"f{i}").write_bytes(d.encode() * (i + 1))
    (root / "a" / "link").symlink_to("b/c")
    os.mkfifo(root / "z" / "fifo")


def test_a_scanner_process_lists_what_threads_list(tmp_path: Path) -> None:
    _tree(tmp_path)
    _run(
        """
        roots = [os.fsencode(top / "a"), os.fsencode(top / "a-b"), os.fsencode(top / "z")]
        threads = TreeScanner(roots, [b"f1"])
        try:
            expected = walk_all(threads, roots)
        finally:
            threads.close()
        process = ScanProcess(roots, [b"f1"])
        try:
            got = walk_all(process, roots)
        finally:
            process.close()
        assert got == expected
        names = {n.name for _, listing in got for n in listing.entries}
        assert b"f1" not in names and {b"f0", b"f2", b"link", b"fifo"} <= names, names
        """,
        tmp_path,
    )


def test_roots_are_walked_name_by_name_down_the_path(tmp_path: Path) -> None:
    """`a-b` sorts before `a/b` as a string but after `a` as a name: the scanner
    process must list the roots in the walk's order, or it falls out of step."""
    _tree(tmp_path)
    _run(
        """
        repo = Repository.init(
            LocalBackend(top / "repo"), b"pw", kdf=TEST_KDF, created="", hostname="",
            username="",
        )
        repo.load_index()
        request = BackupRequest(
            paths=[str(top / "a-b"), str(top / "a" / "b"), str(top / "a0")], client="c"
        )
        scanner = start_scan(request)
        try:
            assert isinstance(scanner, ScanProcess), scanner
            result = Archiver(repo, SystemClock(), scanner=scanner).backup(request)
        finally:
            scanner.close()
        paths = {p for p, _ in walk(repo, result.snapshot.tree)}
        base = os.fsencode(top)
        assert {base + b"/a-b/f0", base + b"/a/b/c/f2", base + b"/a0/f1"} <= paths, paths
        """,
        tmp_path,
    )


def test_a_scanner_process_that_dies_fails_the_walk_cleanly(tmp_path: Path) -> None:
    for i in range(3000):  # far more than it can list before it is killed
        (tmp_path / "many" / f"d{i:04}").mkdir(parents=True)
    _run(
        """
        many = os.fsencode(top / "many")
        expected = [many] + [many + b"/d%04d" % i for i in range(3000)]
        process = ScanProcess([many], [])
        try:
            os.kill(process.pid, signal.SIGKILL)
            try:
                for path in expected:  # what it wrote before it died comes first
                    process.listing(path)
            except StrongroomError as e:
                assert "scanner process ended unexpectedly" in str(e), e
            else:
                raise AssertionError("the walk did not notice its scanner died")
        finally:
            process.close()
        """,
        tmp_path,
    )


def test_no_scanner_process_beside_a_second_thread(tmp_path: Path) -> None:
    _tree(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        scanner = start_scan(BackupRequest(paths=[str(tmp_path / "a")], client="c"))
        try:
            assert isinstance(scanner, TreeScanner)
        finally:
            scanner.close()
    finally:
        stop.set()
        thread.join()


def test_the_backup_command_forks_its_scanner_before_loading_the_heavy_code() -> None:
    """The scanner starts listing while the cryptography and storage code loads: the
    entry point and the backup command's module (all that runs before the fork) must
    not import them."""
    code = (
        "import sys\n"
        "import strongroom.cli.main, strongroom.cli.commands.backup\n"
        "from strongroom.engine.scanproc import start_scan\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cryptography', 'zstandard', 'blake3', 'pydantic', 'sqlalchemy', 'boto3') "
        "or m in ('strongroom.repository.repository', 'strongroom.backend.local', "
        "'strongroom.engine.archiver'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
