"""Walking a snapshot's trees: every node with its path, in order."""

from __future__ import annotations

from collections.abc import Iterator

from strongroom.repository import TREE, Node, Repository
from strongroom.repository.tree import DIR, decode_tree


def load_tree(repo: Repository, tree_id: bytes) -> list[Node]:
    data = repo.load_blob(tree_id, TREE)
    return decode_tree(data, f"tree {tree_id.hex()[:16]}").nodes


def walk(repo: Repository, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """(path, node) for every node below ``tree_id``, depth first, parents first."""
    for node in load_tree(repo, tree_id):
        path = prefix + b"/" + node.name
        yield path, node
        if node.type == DIR and node.subtree is not None:
            yield from walk(repo, node.subtree, path)


def changes(
    repo: Repository, old: bytes | None, new: bytes, prefix: bytes = b""
) -> tuple[list[tuple[bytes, Node]], list[bytes]]:
    """What changed from tree ``old`` to tree ``new``: (path, node) of every entry that
    is new or whose type, size or mtime differ (depth first, parents first), and the
    paths that are gone. A subtree with the same id in both is the same: not read."""
    changed: list[tuple[bytes, Node]] = []
    removed: list[bytes] = []
    _changes(repo, old, new, prefix, changed, removed)
    return changed, removed


def _changes(
    repo: Repository,
    old: bytes | None,
    new: bytes,
    prefix: bytes,
    changed: list[tuple[bytes, Node]],
    removed: list[bytes],
) -> None:
    if old == new:
        return
    before = {} if old is None else {n.name: n for n in load_tree(repo, old)}
    for node in load_tree(repo, new):
        path = prefix + b"/" + node.name
        was = before.pop(node.name, None)
        if was is None or (was.type, was.size, was.mtime_ns) != (
            node.type,
            node.size,
            node.mtime_ns,
        ):
            changed.append((path, node))
        was_tree = was.subtree if was is not None and was.type == DIR else None
        if node.type == DIR and node.subtree is not None:
            _changes(repo, was_tree, node.subtree, path, changed, removed)
        elif was_tree is not None:
            removed.extend(p for p, _ in walk(repo, was_tree, path))
    for name, was in before.items():
        path = prefix + b"/" + name
        removed.append(path)
        if was.type == DIR and was.subtree is not None:
            removed.extend(p for p, _ in walk(repo, was.subtree, path))


def find_node(repo: Repository, tree_id: bytes, path: bytes) -> Node | None:
    """The node at ``path`` (absolute, as backed up), or None."""
    parts = [p for p in path.split(b"/") if p]
    current: bytes | None = tree_id
    node: Node | None = None
    for part in parts:
        if current is None:
            return None
        node = next((n for n in load_tree(repo, current) if n.name == part), None)
        if node is None:
            return None
        current = node.subtree
    return node
