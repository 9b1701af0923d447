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
