"""Trees: one directory's entries, stored as a tree blob (msgpack, names as bytes)."""

from __future__ import annotations

import msgspec

from strongroom.errors import IntegrityError
from strongroom.repository.codec import decode

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
SOCKET = "socket"
NODE_TYPES = frozenset({FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET})


class Node(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One directory entry. ``content`` items are blob ids (bytes) or hole lengths (int).

    Access times are not recorded (as in borg): reading a file changes its atime, and
    storing it would make every unchanged directory a new tree on the next backup.
    """

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    rdev: int = 0
    content: list[bytes | int] = msgspec.field(default_factory=list)
    subtree: bytes | None = None
    target: bytes | None = None
    xattrs: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)
    changed: bool = False

    @property
    def name_text(self) -> str:
        return self.name.decode("utf-8", "surrogateescape")


class Tree(msgspec.Struct):
    nodes: list[Node]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Tree)


def encode_tree(nodes: list[Node]) -> bytes:
    return _encoder.encode(Tree(sorted(nodes, key=lambda n: n.name)))


def decode_tree(data: bytes, what: str) -> Tree:
    tree = decode(_decoder, data, what, "tree")
    for node in tree.nodes:
        if node.type not in NODE_TYPES:
            raise IntegrityError(f"{what}: unknown node type {node.type!r}")
    return tree


def is_safe_name(name: bytes) -> bool:
    """A name that can only ever mean 'an entry in this directory'."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
