"""Reading file metadata into tree nodes: owners, times, xattrs, kinds of file."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from strongroom.repository import tree
from strongroom.repository.tree import Node


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def display_path(path: bytes | str) -> str:
    """Text for a path that may not be UTF-8: undecodable bytes become \\x escapes,
    never an exception."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_KINDS = {
    stat.S_IFREG: tree.FILE,
    stat.S_IFDIR: tree.DIR,
    stat.S_IFLNK: tree.SYMLINK,
    stat.S_IFIFO: tree.FIFO,
    stat.S_IFCHR: tree.CHARDEV,
    stat.S_IFBLK: tree.BLOCKDEV,
}


def node_type(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), tree.SOCKET)


def node_from_stat(name: bytes, st: os.stat_result) -> Node:
    """A node for a directory entry, from its lstat (a few microseconds each: the
    scan makes one per entry)."""
    mode = st.st_mode
    kind = node_type(mode)
    uid, gid = st.st_uid, st.st_gid
    return Node(
        name,
        kind,
        mode & 0o7777,
        uid,
        gid,
        user_name(uid),
        group_name(gid),
        st.st_mtime_ns,
        0,  # access times are not kept (see Node)
        st.st_ctime_ns,
        st.st_size if kind == tree.FILE else 0,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_rdev if kind == tree.CHARDEV or kind == tree.BLOCKDEV else 0,
    )


def read_xattrs(fd: int) -> list[tuple[bytes, bytes]]:
    """Extended attributes of an open file; none where the filesystem has none."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            return []
        raise
    result = []
    for attr in sorted(names):
        try:
            result.append((os.fsencode(attr), os.getxattr(fd, attr)))
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue
            raise
    return result


O_NOATIME: int = getattr(os, "O_NOATIME", 0)  # Linux's; elsewhere reads may set atime


def open_noatime(path: bytes, flags: int) -> int:
    """``open_path`` for reading without updating the file's access time, where the
    kernel allows it (the file's owner, or a process with CAP_FOWNER such as root);
    elsewhere a plain open. A backup then leaves atime as it found it, and does not
    dirty the inode of every file it reads (relatime still writes one a day)."""
    if O_NOATIME:
        try:
            return open_path(path, flags | O_NOATIME)
        except PermissionError as e:
            if e.errno != errno.EPERM:  # EPERM: not ours to read without atime
                raise
    return open_path(path, flags)


def open_path(path: bytes, flags: int) -> int:
    """``os.open`` that also works for paths longer than PATH_MAX, one component at a time."""
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
    parent, _, name = path.rstrip(b"/").rpartition(b"/")
    fd = os.open(b"/" if path.startswith(b"/") else b".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parent.split(b"/"):
            if part:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)
