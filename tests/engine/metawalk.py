"""A byte-level, lstat-based description of a directory tree, for round-trip comparisons.

Everything is done relative to directory descriptors opened with O_NOFOLLOW, so paths
longer than PATH_MAX work and no symlink is ever followed. FIFOs, sockets and device
nodes are never opened. Sparse files are read only where they hold data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
BLOCK = 4096


@dataclass(frozen=True)
class Entry:
    type: str
    mode: int  # the full st_mode: type bits and permission bits
    uid: int
    gid: int
    size: int | None  # regular files and symlinks only
    mtime_ns: int
    nlink: int | None  # not for directories
    rdev: int | None
    target: bytes | None
    content: str | None
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass
class TreeDescription:
    entries: dict[bytes, Entry] = field(default_factory=dict)
    # inode -> every path naming it (non-directories with more than one link)
    inodes: dict[int, list[bytes]] = field(default_factory=dict)
    blocks: dict[bytes, int] = field(default_factory=dict)

    def hardlink_groups(self) -> set[frozenset[bytes]]:
        return {frozenset(paths) for paths in self.inodes.values() if len(paths) > 1}


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    raise AssertionError(f"unknown file type {mode:o}")


def content_digest(fd: int, size: int) -> str:
    """A digest of a file's logical content that reads only its data regions.

    Every 4 KiB block that holds a non-zero byte is hashed with its offset; holes and
    all-zero blocks are skipped. Two files of the same size have the same content
    exactly when their digests match, however their holes are laid out.
    """
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        block_start = start - start % BLOCK
        while block_start < end:
            want = min(1 << 20, end - block_start)
            data = os.pread(fd, want, block_start)
            if not data:
                break
            for off in range(0, len(data), BLOCK):
                block = data[off : off + BLOCK]
                if block.count(0) != len(block):
                    h.update((block_start + off).to_bytes(8, "little"))
                    h.update(block)
            block_start += len(data)
        pos = end
    return h.hexdigest()


def _xattrs(fd: int) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    # security.* (SELinux labels and the like) are set by the system, not restored.
    return tuple(sorted((n, os.getxattr(fd, n)) for n in names if not n.startswith("security.")))


def describe(root: str | os.PathLike[str]) -> TreeDescription:
    """Describe ``root`` (a directory) and everything below it, keyed by relative path."""
    desc = TreeDescription()
    fd = os.open(root, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        desc.entries[b"."] = _entry_for_dir(fd, st)
        _walk(fd, b".", desc)
    finally:
        os.close(fd)
    return desc


def _entry_for_dir(fd: int, st: os.stat_result) -> Entry:
    return Entry(
        type="dir",
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=None,
        mtime_ns=st.st_mtime_ns,
        nlink=None,
        rdev=None,
        target=None,
        content=None,
        xattrs=_xattrs(fd),
    )


def _walk(dir_fd: int, prefix: bytes, desc: TreeDescription) -> None:
    names = sorted(os.fsencode(n) for n in os.listdir(dir_fd))
    for name in names:
        path = prefix + b"/" + name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        kind = _kind(st.st_mode)
        if kind == "dir":
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                desc.entries[path] = _entry_for_dir(fd, os.fstat(fd))
                _walk(fd, path, desc)
            finally:
                os.close(fd)
            continue
        if st.st_nlink > 1:
            desc.inodes.setdefault(st.st_ino, []).append(path)
        target = content = None
        xattrs: tuple[tuple[str, bytes], ...] = ()
        if kind == "symlink":
            target = os.readlink(name, dir_fd=dir_fd)
        elif kind == "file":
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                content = content_digest(fd, st.st_size)
                xattrs = _xattrs(fd)
            finally:
                os.close(fd)
            desc.blocks[path] = st.st_blocks
        desc.entries[path] = Entry(
            kind,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size if kind in ("file", "symlink") else None,
            st.st_mtime_ns,
            st.st_nlink,
            st.st_rdev if kind in ("chardev", "blockdev") else None,
            target,
            content,
            xattrs,
        )


def differences(expected: TreeDescription, actual: TreeDescription) -> list[str]:
    """Human-readable differences; empty when the trees match byte for byte."""
    out: list[str] = []
    for path in sorted(expected.entries.keys() | actual.entries.keys()):
        e, a = expected.entries.get(path), actual.entries.get(path)
        if e is None:
            out.append(f"{path!r}: unexpected in the restore")
        elif a is None:
            out.append(f"{path!r}: missing from the restore ({e.type})")
        elif e != a:
            for name in e.__dataclass_fields__:
                ev, av = getattr(e, name), getattr(a, name)
                if ev != av:
                    if name == "mode":
                        ev, av = oct(ev), oct(av)
                    out.append(f"{path!r}: {name} {ev!r} != {av!r}")
    if expected.hardlink_groups() != actual.hardlink_groups():
        out.append(
            f"hard link groups differ: {sorted(map(sorted, expected.hardlink_groups()))} "
            f"!= {sorted(map(sorted, actual.hardlink_groups()))}"
        )
    return out


def user_xattrs_supported(directory: Path) -> bool:
    """Whether the filesystem holding ``directory`` takes user xattrs."""
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True
