"""A hostile agent for R17 tests: speaks the protocol, then misbehaves as told."""

from __future__ import annotations

import json
import os
import sys

from strongroom.agent.protocol import VERSION, read_frame, write_frame


def main() -> None:
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    read_frame(reader)
    write_frame(writer, {"op": "hello", "version": VERSION, "ok": True})
    setup = read_frame(reader)
    with open(os.environ["FAKE_AGENT_LOG"], "w") as log:
        json.dump(sorted(setup), log)
    mode = os.environ["FAKE_AGENT_MODE"]
    if mode == "steal":  # a restore session asking for a blob its snapshot does not name
        write_frame(writer, {"op": "blob", "id": bytes.fromhex(os.environ["FAKE_AGENT_VICTIM"])})
    elif mode == "remove":
        for name in ("snapshots/", "data/", "locks/"):
            write_frame(writer, {"op": "remove", "name": name})
    elif mode == "many":  # more ids in one question than a director answers
        write_frame(writer, {"op": "known_many", "ids": [bytes(32)] * 65537})
    elif mode == "many-blobs":
        blob = {"type": 0, "id": bytes(32), "raw": 1, "compressed": False, "data": b"x"}
        write_frame(writer, {"op": "store_many", "blobs": [blob] * 257})
    elif mode == "short-ids":
        write_frame(writer, {"op": "claim_many", "ids": [bytes(32), b"short"]})
    elif mode == "poison":
        victim = bytes.fromhex(os.environ["FAKE_AGENT_VICTIM"])
        write_frame(writer, {"op": "claim", "id": victim})
        read_frame(reader)
        write_frame(writer, {"op": "store", "type": 0, "id": victim, "raw": 6,
                             "compressed": False, "data": b"forged"})  # fmt: skip
    read_frame(reader)  # the director's answer, if any


if __name__ == "__main__":
    main()
