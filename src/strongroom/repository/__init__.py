"""The repository: content-addressed, compressed, encrypted blobs in packs, with
index, trees, snapshots and keys. Knows nothing of clients or jobs."""

from __future__ import annotations

from strongroom.repository.chunker import Chunker, ChunkerParams
from strongroom.repository.keys import TEST_KDF, KdfParams
from strongroom.repository.pack import DATA, TREE
from strongroom.repository.repository import KeyInfo, Repository
from strongroom.repository.snapshot import Snapshot, Summary
from strongroom.repository.tree import Node, Tree

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
