"""The parent/worker channel: pipelined requests and the turns that keep replies apart."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from strongroom.engine.workers import Channel, Worker, WorkerFailed


@pytest.fixture
def ends() -> Iterator[tuple[Channel, Channel]]:
    """(parent's end, worker's end) of a channel over two pipes."""
    to_worker_r, to_worker_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    parent = Channel(os.fdopen(to_parent_r, "rb"), os.fdopen(to_worker_w, "wb"))
    worker = Channel(os.fdopen(to_worker_r, "rb"), os.fdopen(to_parent_w, "wb"))
    yield parent, worker
    parent.close()
    worker.close()


def test_a_request_that_comes_before_the_awaited_reply_is_held_in_order(
    ends: tuple[Channel, Channel],
) -> None:
    parent, worker = ends
    parent.send({"op": "batch", "n": 2})
    parent.send({"op": "batch", "n": 3})
    parent.send({"op": "claimed", "granted": [True]})
    assert worker.recv_reply("claimed") == {"op": "claimed", "granted": [True]}
    assert worker.recv() == {"op": "batch", "n": 2}
    assert worker.recv() == {"op": "batch", "n": 3}
    parent.close()
    assert worker.recv_reply("claimed") is None  # the end of the stream, not a hang


def _echo_worker(channel: Channel) -> None:
    """Answers each request with two replies, slowly, in order."""
    while (message := channel.recv()) is not None:
        time.sleep(0.01)
        channel.send({"op": "part", "n": message["n"]})
        channel.send({"op": "done", "n": message["n"]})


def test_pipelined_requests_each_read_their_own_replies(ends: tuple[Channel, Channel]) -> None:
    parent, worker_end = ends
    server = threading.Thread(target=_echo_worker, args=(worker_end,), daemon=True)
    server.start()
    lane = Worker(os.getpid(), parent)
    got: dict[int, list[tuple[str, int]]] = {}

    def client(n: int) -> None:
        ticket = lane.begin({"op": "job", "n": n})
        with lane.turn(ticket):
            replies = [lane.recv(), lane.recv()]
        got[n] = [(str(r["op"]), int(r["n"])) for r in replies]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == {n: [("part", n), ("done", n)] for n in range(8)}


def test_a_turn_that_fails_stops_the_next_from_reading_its_replies(
    ends: tuple[Channel, Channel],
) -> None:
    parent, worker_end = ends
    lane = Worker(os.getpid(), parent)
    first = lane.begin({"op": "job", "n": 1})
    second = lane.begin({"op": "job", "n": 2})
    worker_end.send({"op": "part", "n": 1})  # the first request's replies, unread
    with pytest.raises(RuntimeError), lane.turn(first):
        raise RuntimeError("the parent failed while handling the first request")
    with pytest.raises(WorkerFailed), lane.turn(second):
        lane.recv()  # would have been the first request's reply


class _Repo:
    """What a ChildSink uses of a repository in claim_many."""

    class config:
        compression_level = 3

    class master:
        id_key = b"k" * 32


def test_a_worker_compresses_while_asking_only_while_most_blobs_are_new(
    ends: tuple[Channel, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from strongroom.engine import workers

    compressed: list[bytes] = []
    monkeypatch.setattr(
        workers, "compress_blob", lambda level, data: compressed.append(bytes(data)) or None
    )
    parent, worker_end = ends
    sink = workers.ChildSink(worker_end, _Repo())  # type: ignore[arg-type]

    def ask(blobs: list[bytes], grant: bool) -> list[bool]:
        parent.send({"op": "claimed", "granted": [grant] * len(blobs)})
        return sink.claim_many([b"id-" + b for b in blobs], blobs)

    assert ask([b"a", b"b"], True) == [True, True]
    assert compressed == [b"a", b"b"]  # new blobs: compressed while the claim was out
    for n in range(4):  # a new client's files the repository already holds
        ask([b"dup%d" % n], False)
    compressed.clear()
    assert ask([b"c"], False) == [False]
    assert compressed == []  # mostly duplicates lately: no CPU spent before the answer
    for n in range(6):
        ask([b"new%d" % n], True)
    compressed.clear()
    ask([b"d"], True)
    assert compressed == [b"d"]  # new again: back to compressing while asking
    sent = [parent.recv() for _ in range(13)]
    assert all(m is not None and m["op"] == "claim" for m in sent)
