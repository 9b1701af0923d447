"""R14: every kind of file round-trips, byte for byte; plus incremental behaviour (R13).

The source tree holds every kind of file and every awkward name, owner, mode and time
we can make as root. It is backed up through the real CLI (in a child process with a
timeout, so a FIFO that gets opened fails the test instead of hanging it), restored
with --verify, and compared with an lstat-based walker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli, cli_subprocess
from tests.engine.metawalk import describe, differences, user_xattrs_supported

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown)")

GiB = 1 << 30
MiB = 1 << 20
BASE_NS = 1_600_000_000_123_456_789
DEEP_PATH_BYTES = 4000


def _summary(stdout: str) -> dict[str, object]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines, "no JSON output"
    last = lines[-1]
    assert last["type"] == "summary", last
    return last


def _json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --- watching a FIFO for opens ------------------------------------------------------

IN_ACCESS = 0x01
IN_OPEN = 0x20


@contextlib.contextmanager
def watch_opens(path: Path) -> Iterator[list[bytes]]:
    """Collect inotify IN_OPEN/IN_ACCESS events on ``path`` (empty list: never opened)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip("inotify unavailable")
    events: list[bytes] = []
    try:
        if libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN | IN_ACCESS) < 0:
            pytest.skip("inotify_add_watch failed")
        yield events
        try:
            while data := os.read(fd, 65536):
                events.append(data)
        except BlockingIOError:
            pass
    finally:
        os.close(fd)


# --- building the source tree -------------------------------------------------------


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """The kernel's binary form of a POSIX ACL (version 2)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _set_acls(src: Path) -> bool:
    u = ACL_UNDEFINED_ID
    access = _acl(
        (ACL_USER_OBJ, 7, u),
        (ACL_USER, 4, 1234),
        (ACL_GROUP_OBJ, 5, u),
        (ACL_GROUP, 6, 5678),
        (ACL_MASK, 7, u),
        (ACL_OTHER, 0, u),
    )
    default = _acl(
        (ACL_USER_OBJ, 7, u),
        (ACL_USER, 5, 4321),
        (ACL_GROUP_OBJ, 5, u),
        (ACL_MASK, 5, u),
        (ACL_OTHER, 1, u),
    )
    (src / "acl").mkdir()
    (src / "acl" / "file").write_bytes(b"with an access ACL\n")
    try:
        os.setxattr(src / "acl" / "file", "system.posix_acl_access", access)
        os.setxattr(src / "acl", "system.posix_acl_default", default)
        os.setxattr(src / "acl", "system.posix_acl_access", access)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    # created after the default ACL: inherits it
    (src / "acl" / "inherited").write_bytes(b"inherits the default ACL\n")
    return True


def _make_socket(directory: Path, name: str) -> None:
    """Bind a unix socket at directory/name (relative bind: sun_path is short)."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(name)
    finally:
        os.chdir(cwd)


def _make_deep_path(src: Path) -> Path:
    """Nested directories until the absolute path of the leaf file is ~4,000 bytes."""
    current = src / "deep"
    current.mkdir()
    i = 0
    while len(os.fsencode(current)) + 250 < DEEP_PATH_BYTES:
        current = current / (f"{i:03d}" + "d" * 196)
        current.mkdir()
        i += 1
    remaining = DEEP_PATH_BYTES - len(os.fsencode(current)) - 1
    leaf = current / ("L" * remaining)
    leaf.write_bytes(b"at the bottom\n")
    assert len(os.fsencode(leaf)) == DEEP_PATH_BYTES
    return leaf


def build_source(src: Path) -> dict[str, object]:
    """Every kind of file R14 names. Returns facts the tests check afterwards."""
    src.mkdir()
    facts: dict[str, object] = {}
    b = os.fsencode(src)

    (src / "file.txt").write_bytes(b"hello\n" * 100)
    (src / "random.bin").write_bytes(os.urandom(300 * 1024))  # above the chunker minimum
    (src / "empty").write_bytes(b"")
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "sub" / "inner.txt").write_bytes(b"inner\n")

    # symlinks: relative, absolute, dangling, target bytes that are not UTF-8
    os.symlink(b"file.txt", b + b"/rel-link")
    os.symlink(b"/etc/hostname", b + b"/abs-link")
    os.symlink(b"does/not/exist", b + b"/dangling-link")
    os.symlink(b"\xff\xfe-not-utf8\n", b + b"/bad-target-link")
    os.lchown(src / "rel-link", 4321, 8765)

    # one inode, three names, across directories
    (src / "hl" / "a").mkdir(parents=True)
    (src / "hl" / "b").mkdir()
    (src / "hl" / "a" / "one").write_bytes(b"linked content\n" * 50)
    os.link(src / "hl" / "a" / "one", src / "hl" / "b" / "two")
    os.link(src / "hl" / "a" / "one", src / "hl" / "three")

    # 1 GiB apparent size, 4 KiB of data in the middle
    with open(src / "sparse.img", "wb") as f:
        f.truncate(GiB)
        f.seek(GiB // 2)
        f.write(os.urandom(4096))
    sparse_st = os.stat(src / "sparse.img")
    if sparse_st.st_blocks * 512 > MiB:
        pytest.skip("the filesystem of tmp_path does not make sparse files")

    # a FIFO nobody writes to: opening it for reading would block forever
    os.mkfifo(src / "fifo", 0o640)
    os.chown(src / "fifo", 1111, 2222)
    os.mknod(src / "chardev", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "blockdev", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(src / "blockdev", 0, 6)
    _make_socket(src, "sock")

    # names: not UTF-8, with a newline, 255 bytes long
    (src / "names").mkdir()
    nb = os.fsencode(src / "names")
    for name in (b"bad-\xff\xfe.txt", b"new\nline", b"tab\tand space ", b"-dash", b"\xe9t\xe9"):
        with open(nb + b"/" + name, "wb") as f:
            f.write(name + b"\n")
    long_name = "n" * 255
    (src / "names" / long_name).write_bytes(b"255 bytes of name\n")
    (src / "names" / ("D" * 255)).mkdir()
    (src / "names" / ("D" * 255) / ("f" * 255)).write_bytes(b"two long names\n")
    os.mkdir(nb + b"/dir-\xff\n")
    with open(nb + b"/dir-\xff\n/x", "wb") as f:
        f.write(b"x\n")

    facts["deep_leaf"] = _make_deep_path(src)

    # modes and owners
    (src / "modes").mkdir()
    for name, mode, owner in (
        ("setuid", 0o4755, (1234, 5678)),
        ("setgid", 0o2750, (1234, 5678)),
        ("nothing", 0o000, (0, 0)),
        ("private", 0o600, (65534, 65534)),
        ("odd", 0o1604, (99999, 77777)),
    ):
        path = src / "modes" / name
        path.write_bytes(name.encode() + b"\n")
        os.chown(path, *owner)
        os.chmod(path, mode)
    for name, mode, owner in (
        ("sticky", 0o1777, (0, 0)),
        ("setgid-dir", 0o2775, (2345, 6789)),
        ("readonly-dir", 0o500, (1234, 5678)),
    ):
        path = src / "modes" / name
        path.mkdir()
        (path / "inside").write_bytes(b"inside\n")
        os.chown(path, *owner)
        os.chmod(path, mode)

    # xattrs on a file and a directory, when the filesystem takes user xattrs
    facts["xattrs"] = user_xattrs_supported(src)
    if facts["xattrs"]:
        os.setxattr(src / "file.txt", "user.comment", b"a comment")
        os.setxattr(src / "file.txt", "user.binary", b"\x00\xff\x00 binary")
        os.setxattr(src / "file.txt", "user.empty", b"")
        os.setxattr(src / "dir", "user.dirattr", b"on a directory")
        os.setxattr(src / "hl" / "a" / "one", "user.on-a-link-group", b"shared")

    # POSIX ACLs (system.posix_acl_* xattrs), access and default
    facts["acls"] = _set_acls(src)

    # ns times on everything, deepest first so setting a child cannot move a parent
    paths: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(b, topdown=True):
        paths.extend(os.path.join(dirpath, n) for n in dirnames + filenames)
    paths.sort(key=lambda p: (-p.count(b"/"), p))
    for i, path in enumerate([*paths, b]):
        mtime = BASE_NS + i * 1_000_000_007
        os.utime(path, ns=(mtime + 555, mtime), follow_symlinks=False)
    return facts


# --- the round trip -----------------------------------------------------------------


@pytest.mark.root
@needs_root
def test_every_kind_of_file_round_trips(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    facts = build_source(src)
    expected = describe(src)
    assert expected.hardlink_groups() == {frozenset({b"./hl/a/one", b"./hl/b/two", b"./hl/three"})}

    with watch_opens(src / "fifo") as fifo_opens:
        proc = cli_subprocess(
            ["--repo", str(repo_path), "backup", "--json", "--client", "meta", str(src)],
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert fifo_opens == [], "the FIFO was opened during the backup"
    summary = _summary(proc.stdout.decode())
    assert summary["exit_code"] == 0 and summary["warnings"] == 0

    # the sparse file is stored small: the whole repository stays small
    repo_bytes = sum(p.stat().st_size for p in repo_path.rglob("*") if p.is_file())
    assert repo_bytes < 4 * MiB, f"repository is {repo_bytes} bytes after a 1 GiB sparse file"

    target = tmp_path / "target"
    r = cli(
        "--repo", str(repo_path), "--json", "restore", "latest", "--target", str(target), "--verify"
    )
    assert r.code == 0, r.stdout + r.stderr
    restore_summary = _summary(r.stdout)
    assert restore_summary["warnings"] == 0 and restore_summary["errors"] == 0
    regular_files = sum(1 for e in expected.entries.values() if e.type == "file")
    hardlink_extra_names = 2
    assert restore_summary["verified"] >= regular_files - hardlink_extra_names

    restored_root = target / src.relative_to("/")
    actual = describe(restored_root)
    assert differences(expected, actual) == []

    # the sparse file is restored small
    assert actual.entries[b"./sparse.img"].size == GiB
    assert actual.blocks[b"./sparse.img"] * 512 <= MiB

    # the deep file really is there with its whole path (> PATH_MAX once under target)
    deep = os.fsencode(facts["deep_leaf"]).removeprefix(os.fsencode(src))  # type: ignore[arg-type]
    assert b"." + deep in actual.entries
    if facts["xattrs"]:
        assert ("user.comment", b"a comment") in actual.entries[b"./file.txt"].xattrs
        assert ("user.dirattr", b"on a directory") in actual.entries[b"./dir"].xattrs
    if facts["acls"]:
        names = {n for n, _ in actual.entries[b"./acl/inherited"].xattrs}
        assert "system.posix_acl_access" in names
        names = {n for n, _ in actual.entries[b"./acl"].xattrs}
        assert {"system.posix_acl_access", "system.posix_acl_default"} <= names

    # restoring again over the first restore gives the same tree (nothing doubled,
    # hard links still one inode, FIFOs/sockets/devices replaced in place)
    r = cli("--repo", str(repo_path), "restore", "latest", "--target", str(target))
    assert r.code == 0, r.stderr
    assert differences(expected, describe(restored_root)) == []


def test_path_longer_than_path_max_round_trips(repo_path: Path, tmp_path: Path) -> None:
    """R14 says 4,096-byte paths: a file whose absolute path exceeds PATH_MAX (4,096).

    Such a path cannot be passed to open() whole; the archiver must walk by directory
    descriptors to back it up, as the restorer already does.
    """
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    depth_bytes = len(os.fsencode(src))
    try:
        while depth_bytes < 4200:
            name = b"p" * 200
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            depth_bytes += 201
        leaf = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"beyond PATH_MAX\n")
        os.close(leaf)
    finally:
        os.close(fd)
    assert depth_bytes + len(b"/leaf") > 4096

    r = cli("--repo", str(repo_path), "--json", "backup", "--client", "deep", str(src))
    warnings = [
        f"...{str(line['path'])[-40:]}: {line['message']}"
        for line in _json_lines(r.stdout)
        if line["type"] == "warning"
    ]
    assert r.code == 0, warnings or r.stderr
    target = tmp_path / "target"
    r = cli("--repo", str(repo_path), "restore", "latest", "--target", str(target), "--verify")
    assert r.code == 0, r.stderr
    expected = describe(src)
    actual = describe(target / src.relative_to("/"))
    assert any(p.endswith(b"/leaf") for p in expected.entries)
    assert differences(expected, actual) == []
    # metawalk reads through descriptors, so it has to get rid of the tree the same way
    shutil.rmtree(target, ignore_errors=True)


def test_tree_deeper_than_the_restore_descriptor_cache_round_trips(
    repo_path: Path, tmp_path: Path
) -> None:
    """Restore threads open a directory from its nearest open ancestor and keep 64
    open (DIR_CACHE): a tree 150 levels deep, with files and side branches on the
    way down, makes them reopen and evict ancestors while going deeper."""
    src = tmp_path / "src"
    current = src
    for level in range(150):
        current = current / "d"
        current.mkdir(parents=True)
        (current / f"f{level}").write_bytes(b"level %d\n" % level * (level + 1))
        if level % 10 == 0:
            side = current / "side"
            side.mkdir()
            (side / "s").write_bytes(b"side %d\n" % level)
            os.utime(side, ns=(BASE_NS + level, BASE_NS + level))
    r = cli("--repo", str(repo_path), "backup", "--client", "deep", str(src))
    assert r.code == 0, r.stderr
    target = tmp_path / "target"
    r = cli("--repo", str(repo_path), "restore", "latest", "--target", str(target), "--verify")
    assert r.code == 0, r.stderr
    assert differences(describe(src), describe(target / src.relative_to("/"))) == []
    shutil.rmtree(target, ignore_errors=True)


def test_verify_of_a_large_sparse_file_runs_in_bounded_memory(
    repo_path: Path, tmp_path: Path
) -> None:
    """restore --verify must not hold a whole hole in memory (VM images are mostly holes).

    An 8 GiB file with 4 KiB of data, restored by a child limited to 1 GiB of address
    space: without --verify that is easy; with it, it must be too.
    """
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit not installed")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(8 * GiB)
        f.seek(5 * GiB)
        f.write(b"\x01" * 4096)
    if os.stat(src / "disk.img").st_blocks * 512 > MiB:
        pytest.skip("the filesystem of tmp_path does not make sparse files")
    r = cli("--repo", str(repo_path), "backup", "--client", "vm", str(src))
    assert r.code == 0, r.stderr
    base = [prlimit, f"--as={GiB}", "--", *_strongroom(repo_path)]
    for target, extra in ((tmp_path / "plain", []), (tmp_path / "verified", ["--verify"])):
        proc = subprocess.run(
            [*base, "restore", "latest", "--target", str(target), *extra],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, (extra, proc.stderr.decode(errors="replace"))
        restored = target / src.relative_to("/") / "disk.img"
        st = os.stat(restored)
        assert st.st_size == 8 * GiB and st.st_blocks * 512 <= MiB


def _strongroom(repo: Path) -> list[str]:
    return [sys.executable, "-m", "strongroom", "--repo", str(repo)]


# --- names that are not UTF-8 where they are not only tree entries ------------------


def test_backup_root_whose_name_is_not_utf8(repo_path: Path, tmp_path: Path) -> None:
    """A backed-up path (the snapshot's ``paths``) with undecodable bytes in its name."""
    root = os.fsencode(tmp_path) + b"/root-\xff\xfe"
    os.mkdir(root)
    with open(root + b"/f", "wb") as f:
        f.write(b"data\n")
    root_arg = os.fsdecode(root)
    r = cli("--repo", str(repo_path), "--json", "backup", "--client", "u8", root_arg)
    assert r.code == 0, r.stdout + r.stderr
    r = cli("--repo", str(repo_path), "dump", "latest", os.fsdecode(root + b"/f"))
    assert r.code == 0 and r.stdout_bytes == b"data\n"
    target = tmp_path / "target"
    r = cli("--repo", str(repo_path), "restore", "latest", "--target", str(target))
    assert r.code == 0, r.stderr
    with open(os.fsencode(target) + root + b"/f", "rb") as f:
        assert f.read() == b"data\n"
    # and the listing commands print it in a real process (strict UTF-8 stdout)
    for args in (["snapshots"], ["ls", "latest"], ["--json", "snapshots"]):
        proc = cli_subprocess(
            ["--repo", str(repo_path), *args], env={"PYTHONIOENCODING": "utf-8"}, timeout=60
        )
        assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"))
        assert b"root-" in proc.stdout


@pytest.mark.root
@needs_root
def test_unreadable_file_whose_name_is_not_utf8(repo_path: Path, tmp_path: Path) -> None:
    """The warning names a file with undecodable bytes: the snapshot is still written."""
    src = tmp_path / "src"
    _small_tree(src)
    secret = os.fsencode(src) + b"/secret-\xff"
    with open(secret, "wb") as f:
        f.write(b"hidden\n")
    os.chmod(secret, 0o000)
    proc = subprocess.run(
        _without_dac_override(
            [*_strongroom(repo_path), "--json", "backup", "--client", "u", str(src)]
        ),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr.decode(errors="replace")
    lines = _json_lines(proc.stdout.decode())
    (warning,) = [line for line in lines if line["type"] == "warning"]
    assert os.fsencode(str(warning["path"])) == secret
    snaps = json.loads(cli("--repo", str(repo_path), "--json", "snapshots").stdout)
    assert [s["id"] for s in snaps] == [lines[-1]["snapshot_id"]]


# --- incremental behaviour ----------------------------------------------------------


def _small_tree(src: Path) -> int:
    """A few regular files; returns how many."""
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a\n" * 1000)
    (src / "empty").write_bytes(b"")
    (src / "sub" / "b.bin").write_bytes(os.urandom(400 * 1024))
    (src / "sub" / "c.txt").write_bytes(b"c\n")
    os.symlink("a.txt", src / "link")
    os.mkfifo(src / "fifo")
    if user_xattrs_supported(src):
        os.setxattr(src / "a.txt", "user.note", b"kept across backups")
        os.setxattr(src / "sub", "user.note", b"on the directory")
    # Files modified within seconds of a backup are read again next time (racy mtimes):
    # give these old ones, as real unchanged files have.
    for name in ("a.txt", "empty", "sub/b.bin", "sub/c.txt"):
        os.utime(src / name, ns=(BASE_NS, BASE_NS))
    return 4


def _backup(repo: Path, src: Path, *extra: str) -> dict[str, object]:
    r = cli("--repo", str(repo), "--json", "backup", "--client", "inc", *extra, str(src))
    assert r.code == 0, r.stdout + r.stderr
    return _summary(r.stdout)


def test_unchanged_tree_reads_nothing(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    n = _small_tree(src)
    first = _backup(repo_path, src)
    assert first["files_new"] == n and first["bytes_read"] == 400 * 1024 + 2000 + 2
    second = _backup(repo_path, src)
    assert second["bytes_read"] == 0
    assert second["files_read"] == 0
    assert second["files_unmodified"] == n
    assert second["files_new"] == 0 and second["files_changed"] == 0
    assert second["snapshot_id"] != first["snapshot_id"]

    # the snapshot made from the files cache is as complete as the first: same
    # contents, same metadata, xattrs included
    target = tmp_path / "target"
    r = cli("--repo", str(repo_path), "restore", str(second["snapshot_id"]), "--target",
            str(target))  # fmt: skip
    assert r.code == 0, r.stderr
    assert differences(describe(src), describe(target / src.relative_to("/"))) == []


def test_modified_file_is_read_again(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    n = _small_tree(src)
    _backup(repo_path, src)
    # one file grows; another keeps its size but gets new content and a new mtime
    with open(src / "a.txt", "ab") as f:
        f.write(b"more\n")
    (src / "sub" / "c.txt").write_bytes(b"C\n")
    os.utime(src / "sub" / "c.txt", ns=(BASE_NS, BASE_NS))
    second = _backup(repo_path, src)
    assert second["files_read"] == 2
    assert second["files_unmodified"] == n - 2
    assert second["bytes_read"] == 2005 + 2
    # known paths whose contents changed are "changed", not "new"
    assert (second["files_new"], second["files_changed"]) == (0, 2)

    r = cli("--repo", str(repo_path), "dump", "latest", str(src / "sub" / "c.txt"))
    assert r.code == 0 and r.stdout_bytes == b"C\n"
    r = cli("--repo", str(repo_path), "dump", "latest", str(src / "a.txt"))
    assert r.code == 0 and r.stdout_bytes == b"a\n" * 1000 + b"more\n"


def _without_dac_override(args: list[str]) -> list[str]:
    """Run as root but without the capabilities that let root read any file."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", *args]


@pytest.mark.root
@needs_root
def test_unreadable_file_gives_exit_3_and_is_named(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    n = _small_tree(src)
    secret = src / "sub" / "secret-unreadable.txt"
    secret.write_bytes(b"you cannot read me\n")
    secret.chmod(0o000)

    base = _strongroom(repo_path)
    proc = subprocess.run(
        _without_dac_override([*base, "--json", "backup", "--client", "u", str(src)]),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode == 0:
        pytest.skip("dropping CAP_DAC_OVERRIDE did not make the file unreadable here")
    assert proc.returncode == 3, proc.stderr.decode(errors="replace")
    lines = _json_lines(proc.stdout.decode())
    warnings = [line for line in lines if line["type"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["path"] == str(secret)
    assert "cannot open" in str(warnings[0]["message"])
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["exit_code"] == 3
    assert summary["warnings"] == 1
    assert summary["files_new"] == n

    # the snapshot was written and holds everything else
    snaps = json.loads(cli("--repo", str(repo_path), "--json", "snapshots").stdout)
    assert [s["id"] for s in snaps] == [summary["snapshot_id"]]
    r = cli("--repo", str(repo_path), "dump", "latest", str(src / "sub" / "c.txt"))
    assert r.code == 0 and r.stdout_bytes == b"c\n"

    # the human form names the file on stderr
    proc = subprocess.run(
        _without_dac_override([*base, "backup", "--client", "u", str(src)]),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3
    stderr = proc.stderr.decode(errors="replace")
    assert str(secret) in stderr and "warning" in stderr
    assert "Traceback" not in stderr
