"""The repository: content-addressed, compressed, encrypted blobs in packs, with
index, trees, snapshots and keys. Knows nothing of clients or jobs.

The names below load their module when first used, so that a light part (the tree
format, which the directory scanner needs) can be imported before the rest: a backup
forks its scanner before it loads the cryptography and storage code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strongroom.repository.chunker import Chunker, ChunkerParams
    from strongroom.repository.keys import TEST_KDF, KdfParams
    from strongroom.repository.pack import DATA, TREE
    from strongroom.repository.repository import KeyInfo, Repository
    from strongroom.repository.snapshot import Snapshot, Summary
    from strongroom.repository.tree import Node, Tree

_WHERE = {
    "Chunker": "chunker",
    "ChunkerParams": "chunker",
    "TEST_KDF": "keys",
    "KdfParams": "keys",
    "DATA": "pack",
    "TREE": "pack",
    "KeyInfo": "repository",
    "Repository": "repository",
    "Snapshot": "snapshot",
    "Summary": "snapshot",
    "Node": "tree",
    "Tree": "tree",
}

__all__ = [
    "DATA",
    "TEST_KDF",
    "TREE",
    "Chunker",
    "ChunkerParams",
    "KdfParams",
    "KeyInfo",
    "Node",
    "Repository",
    "Snapshot",
    "Summary",
    "Tree",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value
