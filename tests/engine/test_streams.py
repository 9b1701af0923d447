"""Streams: a command's output stored as a file below /stdin, or no snapshot at all."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from pathlib import Path

import pytest

from strongroom.clock import SystemClock
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.restorer import Restorer, RestoreRequest
from strongroom.engine.streams import (
    CommandStream,
    StreamFailed,
    check_stream_names,
    graft,
    stream_file_node,
)
from strongroom.engine.walk import find_node, load_tree, walk
from strongroom.errors import UsageError
from strongroom.repository import TREE, Node, Repository, Snapshot
from strongroom.repository.crypto import blob_id
from strongroom.repository.tree import encode_tree
from tests.conftest import open_local_repo

BIG = 50_000_000
# Deterministic bytes with no structure a compressor could use, 50 MB of them.
GENERATE = "import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes({}))"


def _backup(repo: Repository, paths: list[str], *streams: CommandStream) -> Snapshot:
    request = BackupRequest(paths=paths, client="db1", streams=streams)
    return Archiver(repo, SystemClock()).backup(request).snapshot


def test_a_large_stream_round_trips_exactly_and_deduplicates(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    src = tmp_path / "etc"
    src.mkdir()
    (src / "app.conf").write_text("listen = 5432\n")

    def streams() -> list[CommandStream]:
        return [
            CommandStream("sql/app.dump", [sys.executable, "-c", GENERATE.format(BIG)]),
            CommandStream("empty", ["true"]),
        ]

    snap = _backup(repo, [str(src)], *streams())
    assert snap.paths == [str(src), "/stdin/sql/app.dump", "/stdin/empty"]
    assert snap.summary.bytes_read == BIG + len("listen = 5432\n")
    node = find_node(repo, snap.tree, b"/stdin/sql/app.dump")
    assert node is not None and node.type == "file"
    assert (node.size, node.mode, node.uid, node.gid) == (BIG, 0o600, os.getuid(), os.getgid())
    assert abs(node.mtime_ns - time.time_ns()) < 600 * 10**9
    assert len(node.content) > 10  # chunked like a file, not one blob
    stdin_dir = find_node(repo, snap.tree, b"/stdin")
    assert stdin_dir is not None and (stdin_dir.type, stdin_dir.mode) == ("dir", 0o700)

    target = tmp_path / "restored"
    result = Restorer(repo).restore(snap, RestoreRequest(target=str(target), verify=True))
    assert result.errors == [] and result.verified == 3
    restored = target / "stdin" / "sql" / "app.dump"
    expected = hashlib.sha256(random.Random(7).randbytes(BIG)).hexdigest()
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == expected
    assert restored.stat().st_mode & 0o777 == 0o600
    assert (target / "stdin" / "empty").read_bytes() == b""
    assert (target / str(src).lstrip("/") / "app.conf").read_text() == "listen = 5432\n"

    second = _backup(repo, [str(src)], *streams())
    assert second.summary.bytes_read == BIG + len("listen = 5432\n")  # read again, always
    assert second.summary.bytes_new < 100_000  # but stored once: only new trees
    again = find_node(repo, second.tree, b"/stdin/sql/app.dump")
    assert again is not None and again.content == node.content


def test_a_stream_alone_makes_a_snapshot(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    snap = _backup(repo, [], CommandStream("x", ["echo", "hi"]))
    assert snap.paths == ["/stdin/x"]
    assert [p for p, _ in walk(repo, snap.tree)] == [b"/stdin", b"/stdin/x"]


@pytest.mark.parametrize(
    ("script", "how"),
    [
        ("for i in $(seq 30); do echo line $i >&2; done; echo half; exit 3", "exited with code 3"),
        ("echo half; kill -9 $$", "was killed by signal 9"),
    ],
)
def test_a_failing_command_fails_the_backup_and_writes_no_snapshot(
    tmp_path: Path, script: str, how: str
) -> None:
    repo = open_local_repo(tmp_path / "repo")
    src = tmp_path / "etc"
    src.mkdir()
    (src / "f").write_text("x")
    stream = CommandStream("sql/app.dump", ["sh", "-c", script])
    with pytest.raises(StreamFailed) as failure:
        _backup(repo, [str(src)], stream)
    message = str(failure.value)
    assert f"stream sql/app.dump (command: sh -c '{script}') {how}" in message
    if "seq" in script:  # the last lines of stderr, not all of them
        assert "line 30" in message and "line 26" in message and "line 25" not in message
    assert repo.snapshot_ids() == []


def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    pidfile = tmp_path / "child.pid"
    # The backgrounded sleep holds the pipe open: only killing the group ends the read.
    script = f"sleep 120 & echo $! > {pidfile}; echo partial output; wait"
    start = time.monotonic()
    with pytest.raises(StreamFailed, match=r"was killed after its 1s timeout"):
        _backup(repo, [], CommandStream("slow", ["sh", "-c", script], timeout_s=1))
    assert time.monotonic() - start < 30
    assert repo.snapshot_ids() == []
    assert not _alive(int(pidfile.read_text()))


def test_a_backup_that_fails_elsewhere_stops_its_streams(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    start = time.monotonic()
    with pytest.raises(UsageError, match="No such file"):
        _backup(repo, [str(tmp_path / "missing")], CommandStream("s", ["sleep", "120"]))
    assert time.monotonic() - start < 30
    assert repo.snapshot_ids() == []


def test_a_command_that_cannot_start_names_itself(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    with pytest.raises(StreamFailed, match=r"command: no-such-dumper --all\): cannot run it"):
        _backup(repo, [], CommandStream("s", ["no-such-dumper", "--all"]))


@pytest.mark.parametrize(
    ("names", "roots", "error"),
    [
        (["../etc/passwd"], [], "relative path"),
        (["/abs"], [], "relative path"),
        (["a//b"], [], "relative path"),
        (["a/./b"], [], "relative path"),
        (["x", "x"], [], "two streams are named 'x'"),
        (["sql", "sql/app.dump"], [], "would share a place"),
        (["sql-x", "sql/a", "sql"], [], "would share a place"),
        (["x"], [b"/stdin"], "where streams are stored"),
        (["x"], [b"/stdin/y"], "where streams are stored"),
    ],
)
def test_stream_places_are_checked(names: list[str], roots: list[bytes], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        check_stream_names(names, roots)


def test_distinct_stream_places_pass() -> None:
    check_stream_names(["sql/a", "sql/b", "sql-x", "x"], [b"/etc", b"/stdinx"])


def test_graft_adds_streams_beside_existing_ones(tmp_path: Path) -> None:
    repo = open_local_repo(tmp_path / "repo")
    snap = _backup(repo, [], CommandStream("sql/a", ["echo", "a"]))
    saved: list[bytes] = []

    def save(nodes: list[Node]) -> bytes:
        data = encode_tree(nodes)
        bid = blob_id(repo.master.id_key, data)
        writer = repo.new_pack_writer()
        writer.add(TREE, bid, data)
        repo.upload_pack(writer)
        saved.append(bid)
        return bid

    def load(tree_id: bytes) -> list[Node]:
        return load_tree(repo, tree_id)

    extra = [("sql/b", stream_file_node(b"b", 0, [], 1)), ("c", stream_file_node(b"c", 0, [], 1))]
    root = graft(snap.tree, extra, load, save, 1)
    assert root == saved[-1]
    assert [p for p, _ in walk(repo, root)] == [
        b"/stdin", b"/stdin/c", b"/stdin/sql", b"/stdin/sql/a", b"/stdin/sql/b",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="/stdin/sql/a: a stream's place is taken"):
        graft(snap.tree, [("sql/a", stream_file_node(b"a", 0, [], 1))], load, save, 1)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
