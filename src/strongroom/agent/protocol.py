"""The agent protocol, version 1: length-prefixed msgpack frames over a byte stream.

Each frame is a 4-byte big-endian length and a msgpack map with an ``op``. Frames
larger than MAX_FRAME, malformed maps and unknown ops are protocol errors: the session
ends. See docs/agent.md.

``VERSION`` must match on both sides. ``MINOR`` counts backward-compatible additions,
each announced in ``hello`` (a side that predates them sends no ``minor``: 0) and used
only when the other side announced it: 1 adds ``streams`` to ``backup``; 2 adds the
requests ``stat`` and ``run`` (a job's fresh-file prerequisites and its commands
with ``on = "client"``, checked and run on the client); 3 adds ``known_many``,
``claim_many``, ``store_many`` and ``blobs`` (many chunks per round trip).
"""

from __future__ import annotations

import struct
import threading
from typing import Any, BinaryIO

import msgspec

from strongroom.errors import EXIT_INTEGRITY, IntegrityError, StrongroomError

VERSION = 1
MINOR = 3
MINOR_STREAMS = 1  # `backup {streams: [{name, command, timeout}]}`: run on the client
MINOR_CLIENT_CHECKS = 2  # `stat {path}` and `run {command, timeout, env}`
# `known_many {ids}`, `claim_many {ids}`, `store_many {blobs}` and (restore)
# `blobs {ids}`: many per round trip
MINOR_BATCHES = 3
# Ids in one known_many or claim_many request (a frame of about 2.2 MiB).
MAX_IDS = 65536
# Blobs in one store_many request: this many, or this much data (a blob is at most
# 4 MiB raw, so a frame stays well under MAX_FRAME).
STORE_BATCH = 256
STORE_BATCH_BYTES = 8 << 20
# Blobs asked for in one `blobs {ids}` (restore through the agent); the director
# answers with as many as fit in RESTORE_BATCH_BYTES, at least one.
RESTORE_BATCH = 1024
RESTORE_BATCH_BYTES = 8 << 20
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class ProtocolError(StrongroomError):
    """The other side sent something this side cannot accept; the session is over."""

    hint = "check that director and client run the same strongroom version"


class SessionClosed(ProtocolError):
    """The other side went away (its process ended, or the connection dropped)."""


class RemoteError(StrongroomError):
    """The other side failed and said so, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def remote_error(message: dict[str, Any], prefix: str = "") -> StrongroomError:
    """The error an ``error`` or ``failed`` message reports; damage stays an IntegrityError
    (the restorer tells damaged files from other failures by that type)."""
    text = prefix + str(message.get("message", ""))
    code = int(message.get("exit_code", 1))
    return IntegrityError(text) if code == EXIT_INTEGRITY else RemoteError(text, code)


class Channel:
    """Request and reply over one stream pair, one request in flight at a time."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self._reader, self._writer = reader, writer
        self._lock = threading.Lock()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            write_frame(self._writer, message)
            reply = read_frame(self._reader, frozenset({"ok", "error"}))
        if reply["op"] == "error":
            raise remote_error(reply)
        return reply


def announced_minor(hello: dict[str, Any]) -> int:
    """The minor version the other side's ``hello`` announced (0 when it predates
    them, or sent something that is not a number)."""
    minor = hello.get("minor", 0)
    return minor if isinstance(minor, int) and not isinstance(minor, bool) else 0


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    data = _encoder.encode(message)
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"refusing to send a {len(data)}-byte frame")
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts = []
    while n:
        part = stream.read(n)
        if not part:
            raise SessionClosed("the other side closed the connection")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def read_frame(stream: BinaryIO, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    (length,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    try:
        message = _decoder.decode(_read_exact(stream, length))
    except (msgspec.DecodeError, ValueError, RecursionError, OverflowError) as e:
        raise ProtocolError(f"malformed frame ({e})") from None
    op = message.get("op")
    if not isinstance(op, str) or (allowed is not None and op not in allowed):
        raise ProtocolError(f"unexpected message {op!r}")
    return message


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A required field of the expected type, or a ProtocolError."""
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"message {message.get('op')!r}: bad or missing field {name!r}")
    return value
