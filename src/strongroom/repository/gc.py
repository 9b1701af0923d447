"""Garbage-collection markers, and the check every writer makes before it commits.

A collection never deletes a pack on first sight. It writes a marker (``gc/<sha256>``,
sealed like an index) naming the packs it found unused, and the names of the locks that
were live when the marker appeared. A later collection deletes a marked pack only when
the marker is older than the grace period (by storage timestamps), every lock it
names is gone or long expired, and a fresh listing shows that no snapshot needs the
pack. Writers that load the index while a marker exists never deduplicate against the
packs it names; a writer that loaded its index earlier re-checks the markers before it
commits and copies what it reused out of marked packs. See docs/gc.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from strongroom.backend import Backend, ObjectNotFound
from strongroom.errors import IntegrityError, LockedError
from strongroom.repository import crypto
from strongroom.repository.codec import decode
from strongroom.repository.crypto import MasterKey
from strongroom.repository.pack import (
    TREE,
    PackWriter,
    cipher_for,
    open_blob,
    pack_name,
    read_header,
)
from strongroom.repository.tree import decode_tree

if TYPE_CHECKING:
    from strongroom.repository.repository import Repository
    from strongroom.repository.snapshot import Snapshot

MARKER_PREFIX = "gc/"
MARKER_KIND = b"gcmarker"
# The lock purpose that makes a lock a collector's: two collections never run at once.
GC_PURPOSE = "prune"
# A lock may belong to a live holder until this many of its leases have passed since
# its storage timestamp: room for clock skew between the collector and the storage.
LEASE_SAFETY = 2
MIN_GRACE_S = 3600
DEFAULT_GRACE_S = 6 * 3600
# A marker stays this long (after its packs are gone) so that a writer holding an
# older in-memory index still learns, when it commits, that packs it reused were
# collected. A writer whose index is older than STALE_INDEX_S checks every pack it
# reused instead.
MARKER_KEEP_S = 7 * 86400
STALE_INDEX_S = MARKER_KEEP_S - 86400


class GcMarker(msgspec.Struct):
    version: int
    time_ns: int  # the collector's clock when written; ages are judged by storage time
    candidates: list[str]  # pack ids
    # Locks live (or recently expired) right after the candidates were published.
    locks: list[str]
    # False while the lock record is being taken: such a marker is never swept.
    final: bool
    grace_s: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GcMarker)


@dataclass(frozen=True)
class StoredMarker:
    name: str
    mtime: float  # storage timestamp
    marker: GcMarker


def encode_marker(master: MasterKey, marker: GcMarker) -> bytes:
    return crypto.seal(master, MARKER_KIND, _encoder.encode(marker))


def decode_marker(master: MasterKey, raw: bytes, name: str) -> GcMarker:
    short = name.rsplit("/", 1)[-1]
    what = f"gc marker {short[:8]}"
    if crypto.storage_id(raw) != short:
        raise IntegrityError(f"{what}: contents do not match its name")
    marker = decode(_decoder, crypto.unseal(master, MARKER_KIND, raw, what), what, "gc marker")
    if marker.version != 1:
        raise IntegrityError(f"{what}: unknown marker version {marker.version}")
    if any(len(p) != 64 for p in marker.candidates):
        raise IntegrityError(f"{what}: malformed pack id")
    return marker


def save_marker(backend: Backend, master: MasterKey, marker: GcMarker) -> str:
    raw = encode_marker(master, marker)
    name = f"{MARKER_PREFIX}{crypto.storage_id(raw)}"
    backend.save(name, raw)
    return name


def read_markers(
    backend: Backend, master: MasterKey, skip: Iterable[str] = ()
) -> tuple[list[StoredMarker], dict[str, str]]:
    """Every readable marker (but those named in ``skip``), and the damaged ones (name
    -> message). A listing error is raised: it must never read as "no markers"."""
    known = set(skip)
    markers: list[StoredMarker] = []
    errors: dict[str, str] = {}
    for info in list(backend.list(MARKER_PREFIX)):
        if info.name in known:
            continue
        try:
            raw = backend.load(info.name)
        except ObjectNotFound:
            continue  # removed by a collector while we listed
        try:
            marker = decode_marker(master, raw, info.name)
        except IntegrityError as e:
            errors[info.name] = str(e)
            continue
        markers.append(StoredMarker(info.name, info.mtime, marker))
    return markers, errors


# --- the writer's side ----------------------------------------------------------------


class CollectedMeanwhile(LockedError):
    """A collection removed data this writer had reused: it must not commit."""

    hint = "run the backup again: it will store that data anew"


def protect_commit(repo: Repository, *snapshots: Snapshot) -> None:
    """Before ``snapshots`` are written: make sure they need no pack that a collection
    has marked (or, for a writer with a very old index, deleted) since this process
    deduplicated against it. The blobs they need from such packs are copied into new
    packs, with their index, first; if one is gone already, CollectedMeanwhile (exit
    11) and nothing is written. With no snapshots given, every blob of those packs
    without an unmarked copy is copied instead.

    The usual case costs one small listing of ``gc/``, and nothing at all when no data
    was reused. Once a pack this process relied on is marked, each commit walks its
    snapshot's trees (a repository object shared by several runs, like the director's,
    cannot tell which run relied on it).
    """
    with repo.gc_guard:
        relied = repo.relied_packs()
        if not relied:
            return
        repo.sync_markers()
        if repo.index_age_s() > STALE_INDEX_S:
            gone = set()
            for pack_id in sorted(relied - repo.condemned):
                try:
                    repo.backend.stat(pack_name(pack_id))
                except ObjectNotFound:
                    gone.add(pack_id)
            repo.condemn(gone)
            repo.mark_lost(gone)
        risky = relied & repo.condemned
        if not risky:
            return
        repo.refresh_index()  # copies a collection made (repacking) spare us the work
        if not snapshots:
            repo.mark_lost(_copy_out(repo, sorted(risky - repo.lost_packs)))
            lost = relied & repo.lost_packs
            if lost:
                raise CollectedMeanwhile(
                    f"pack {min(lost)[:8]}, which this process reused, was collected by a "
                    "concurrent prune; not committing"
                )
            return
        needed: dict[bytes, int] = {}
        for snapshot in snapshots:
            _needed_from(repo, snapshot.tree, risky, needed)
        _copy_blobs(repo, needed)


def _needed_from(repo: Repository, root: bytes, risky: set[str], needed: dict[bytes, int]) -> None:
    """Add to ``needed`` (id -> type) the blobs under ``root`` that only ``risky`` packs
    hold; CollectedMeanwhile if one of those is gone."""

    def check(bid: bytes) -> None:
        loc = repo.lookup(bid)
        if loc is None or loc.pack_id not in risky:
            return
        if loc.pack_id in repo.lost_packs:
            raise CollectedMeanwhile(
                f"blob {bid.hex()[:16]}, which this backup reused, was in a pack a "
                "concurrent prune collected; not committing"
            )
        needed[bid] = loc.type

    stack, seen = [root], set()
    while stack:
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        check(tree_id)
        data = _load(repo, tree_id, TREE)
        for node in decode_tree(data, f"tree {tree_id.hex()[:16]}").nodes:
            for item in node.content:
                if isinstance(item, bytes):
                    check(item)
            if node.subtree is not None:
                stack.append(node.subtree)


def _load(repo: Repository, bid: bytes, blob_type: int) -> bytes:
    try:
        return repo.load_blob(bid, blob_type)
    except IntegrityError:
        loc = repo.lookup(bid)
        if loc is None or loc.pack_id not in repo.condemned:
            raise  # damage, not a collection
        try:
            repo.backend.stat(pack_name(loc.pack_id))
        except ObjectNotFound:
            repo.mark_lost({loc.pack_id})
            raise CollectedMeanwhile(
                f"pack {loc.pack_id[:8]}, which this backup reused, was collected by a "
                "concurrent prune; not committing"
            ) from None
        raise


def _copy_blobs(repo: Repository, needed: dict[bytes, int]) -> None:
    """Store these blobs again, in new packs with their index."""
    writers: dict[int, PackWriter] = {}
    try:
        for bid, blob_type in needed.items():
            plain = _load(repo, bid, blob_type)
            writer = writers.get(blob_type)
            if writer is None:
                writer = writers[blob_type] = repo.new_pack_writer()
            writer.add(blob_type, bid, plain)
            if writer.size >= repo.pack_target_size:
                del writers[blob_type]
                repo.upload_pack(writer)
        for writer in writers.values():
            repo.upload_pack(writer)
        writers.clear()
    finally:
        for writer in writers.values():
            writer.discard()
    repo.flush_index()


def _copy_out(repo: Repository, pack_ids: list[str]) -> set[str]:
    """Copy every blob of these packs that has no copy in an unmarked pack; returns
    the packs that were already gone."""
    writers: dict[int, PackWriter] = {}
    gone: set[str] = set()
    try:
        for pack_id in pack_ids:
            what = f"pack {pack_id[:8]}"
            try:
                data = repo.backend.load(pack_name(pack_id))
            except ObjectNotFound:
                gone.add(pack_id)
                continue
            cipher = cipher_for(repo.master, data, what)
            for entry in read_header(repo.master, data, what):
                if repo.has_unmarked_copy(entry.id, pack_id):
                    continue
                plain = open_blob(
                    repo.master,
                    cipher,
                    entry,
                    data[entry.offset : entry.offset + entry.length],
                    f"{what} blob {entry.id.hex()[:16]}",
                )
                writer = writers.get(entry.type)
                if writer is None:
                    writer = writers[entry.type] = repo.new_pack_writer()
                writer.add(entry.type, entry.id, plain)
                if writer.size >= repo.pack_target_size:
                    del writers[entry.type]
                    repo.upload_pack(writer)
        for writer in writers.values():
            repo.upload_pack(writer)
        writers.clear()
    finally:
        for writer in writers.values():
            writer.discard()
    repo.flush_index()
    return gone
