"""Snapshots: the root of one backup, stored as a sealed object under snapshots/."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from strongroom.errors import IntegrityError
from strongroom.repository.codec import decode


class Summary(msgspec.Struct, omit_defaults=True):
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    other: int = 0
    files_read: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    blobs_new: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    errors: int = 0
    duration_s: float = 0.0


class Snapshot(msgspec.Struct, omit_defaults=True):
    time_ns: int
    tree: bytes
    paths: list[str]
    client: str
    job: str = "default"
    hostname: str = ""
    username: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    program_version: str = ""
    summary: Summary = msgspec.field(default_factory=Summary)
    warnings: list[str] = msgspec.field(default_factory=list)
    # The prerequisites that were met, with their evidence ("marker sql-dump: met (...)").
    prerequisites: list[str] = msgspec.field(default_factory=list)
    # Set by `copy`: the snapshot this one was copied from, and that one's repository id.
    original: str = ""
    original_repository: str = ""
    id: str = ""  # filled in on load; not part of the stored object

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ns / 1e9, UTC)

    @property
    def time_rfc3339(self) -> str:
        secs, ns = divmod(self.time_ns, 1_000_000_000)
        base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{ns:09d}Z"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _encoder.encode(msgspec.structs.replace(snapshot, id=""))


def decode_snapshot(data: bytes, snapshot_id: str) -> Snapshot:
    snap = decode(_decoder, data, f"snapshot {snapshot_id[:8]}", "snapshot")
    if len(snap.tree) != 32:
        raise IntegrityError(f"snapshot {snapshot_id[:8]}: malformed tree id")
    return msgspec.structs.replace(snap, id=snapshot_id)
