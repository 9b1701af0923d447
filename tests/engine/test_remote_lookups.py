"""With a remote sink (an agent's director), the unchanged files of many directories are
asked about in one ``known_contents`` question, and a file whose chunks the repository
no longer holds is still read again."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from strongroom.clock import SystemClock
from strongroom.engine.archiver import LOOKUP_BATCH, Archiver, BackupRequest, BackupResult
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.sink import RepositorySink
from strongroom.engine.walk import walk
from strongroom.repository import Repository
from tests.conftest import open_local_repo
from tests.reliability.helpers import age_tree, dirs_of_files

DIRS = 40
FILES = 10  # 400 files: more than one question's worth, far fewer questions than dirs


class _RemoteSink(RepositorySink):
    """The repository's own sink, asked as if it were across a network; it can be told
    to deny the chunks of some files (as if they had been lost since the last run)."""

    remote = True

    def __init__(self, repo: Repository) -> None:
        super().__init__(repo, SystemClock())
        self.questions: list[int] = []
        self.lost: set[bytes] = set()

    def known_contents(self, contents: Sequence[list[bytes | int]]) -> list[bool]:
        self.questions.append(len(contents))
        known = super().known_contents(contents)
        return [ok and not (set(c) & self.lost) for c, ok in zip(contents, known, strict=True)]


def _tree(root: Path) -> None:
    dirs_of_files(root, DIRS, FILES, random.Random(3), 3000)
    age_tree(root)


def _backup(repo: Repository, sink: _RemoteSink, cache: Path, src: Path) -> BackupResult:
    archiver = Archiver(repo, SystemClock(), files_cache=FilesCache(cache), sink=sink, workers=2)
    return archiver.backup(BackupRequest(paths=[str(src)], client="c"))


def _src_tree(repo: Repository, result: BackupResult, src: Path) -> bytes | None:
    """The tree of ``src`` itself (the directories above it change between runs)."""
    nodes = dict(walk(repo, result.snapshot.tree))
    return nodes[os.fsencode(src)].subtree


def _contents(repo: Repository, tree: bytes) -> dict[bytes, list[bytes | int]]:
    return {path: node.content for path, node in walk(repo, tree) if node.type == "file"}


def test_unchanged_files_of_many_directories_share_one_question(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    repo = open_local_repo(tmp_path / "repo")
    cache = tmp_path / "files-cache"

    first = _backup(repo, _RemoteSink(repo), cache, src)
    assert first.snapshot.summary.files_new == DIRS * FILES

    sink = _RemoteSink(repo)
    second = _backup(repo, sink, cache, src)
    summary = second.snapshot.summary
    assert summary.files_unmodified == DIRS * FILES and summary.files_read == 0
    assert sink.questions == [LOOKUP_BATCH, DIRS * FILES - LOOKUP_BATCH], sink.questions
    assert _src_tree(repo, second, src) == _src_tree(repo, first, src)  # from the cache

    # Files whose chunks are gone are read again, wherever they wait in a question.
    contents = _contents(repo, first.snapshot.tree)
    lost = [os.fsencode(src / name) for name in ("d00/f00", "d17/f03", "d39/f09")]
    sink = _RemoteSink(repo)
    for path in lost:
        sink.lost.update(c for c in contents[path] if isinstance(c, bytes))
    third = _backup(repo, sink, cache, src)
    summary = third.snapshot.summary
    assert summary.files_read == len(lost), summary
    assert summary.files_unmodified == DIRS * FILES - len(lost)
    assert _src_tree(repo, third, src) == _src_tree(repo, first, src)
    assert _contents(repo, third.snapshot.tree) == contents
