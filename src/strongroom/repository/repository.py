"""A repository: keys, config, packs, index and snapshots over one backend.

Write order is packs, then the index files that describe them, then the snapshot that
references them, so at every moment each snapshot references only data that exists.
Garbage collection marks packs before it deletes them (repository/gc.py): a writer
never deduplicates against a marked pack, and checks the markers again before it
writes a snapshot.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec

from strongroom.backend import Backend, ObjectNotFound
from strongroom.clock import Clock, SystemClock
from strongroom.errors import (
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPasswordError,
)
from strongroom.repository import crypto, gc
from strongroom.repository.chunker import Chunker, ChunkerParams
from strongroom.repository.codec import decode_as
from strongroom.repository.crypto import MasterKey, PackCipher
from strongroom.repository.index import (
    BlobLocation,
    ChunkIndex,
    RawBlob,
    decode_index_packs,
    encode_index,
)
from strongroom.repository.keys import KdfParams, KeyFile, make_key_file, open_key_file
from strongroom.repository.pack import (
    DATA_OFFSET,
    PackEntry,
    PackWriter,
    cipher_for,
    open_blob,
    pack_name,
)
from strongroom.repository.snapshot import Snapshot, decode_snapshot, encode_snapshot

FORMAT_VERSION = 1
CONFIG_MAGIC = b"SRCONFIG1\n"
PACK_TARGET_SIZE = 16 * 1024 * 1024
# An index entry costs at least this many bytes on storage: used to size the table.
MIN_INDEX_ENTRY_BYTES = 38
# A collector replaces index files (new one first, then the old one goes): a reader that
# finds a listed index file gone lists again, this many times in all.
INDEX_LOAD_ATTEMPTS = 3


class RepoConfig(msgspec.Struct):
    version: int
    id: str
    chunker_min: int
    chunker_avg: int
    chunker_max: int
    compression_level: int = 3


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: str
    hostname: str
    username: str
    current: bool
    damaged: bool = False


def key_name(key_id: str) -> str:
    return f"keys/{key_id}"


class Repository:
    """An open, unlocked repository."""

    def __init__(
        self, backend: Backend, master: MasterKey, config: RepoConfig, key_id: str
    ) -> None:
        self.backend = backend
        self.master = master
        self.config = config
        self.key_id = key_id
        self.index = ChunkIndex()
        self.index_errors: list[str] = []  # damaged index files and gc markers
        self.damaged_markers: dict[str, str] = {}  # gc marker name -> message
        self.index_files: list[str] = []
        # Packs that index files name but storage lacks: their blobs count as absent.
        self.missing_packs: set[str] = set()
        self._index_lock = threading.Lock()
        self._pending: dict[str, list[PackEntry]] = {}
        self._flush_lock = threading.Lock()
        self._ciphers: OrderedDict[str, PackCipher] = OrderedDict()
        self._cipher_lock = threading.Lock()
        self.pack_target_size = PACK_TARGET_SIZE
        # Garbage collection (repository/gc.py). ``condemned``: packs named by a gc
        # marker, never offered for deduplication. ``_relied``: packs this process
        # deduplicated against, checked again before a snapshot is written.
        self.clock: Clock = SystemClock()
        self.condemned: set[str] = set()
        self.gc_guard = threading.Lock()
        self._relied: set[str] = set()
        # Relied-on packs found gone at a commit: their blobs are lost to this process.
        self.lost_packs: set[str] = set()
        self._markers_seen: set[str] = set()
        self._index_files_read: set[str] = set()
        self._index_loaded_at = self.clock.monotonic()

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def chunker_params(self) -> ChunkerParams:
        c = self.config
        return ChunkerParams(c.chunker_min, c.chunker_avg, c.chunker_max)

    def chunker(self) -> Chunker:
        return Chunker(self.chunker_params, self.master.chunker_seed)

    # --- creating and opening -------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        kdf: KdfParams,
        created: str,
        hostname: str,
        username: str,
        chunker: ChunkerParams | None = None,
    ) -> Repository:
        if backend.exists() and any(True for _ in backend.list("")):
            raise RepositoryExists(f"{backend.location}: a repository (or other data) is there")
        backend.create()
        master = MasterKey.generate()
        params = chunker or ChunkerParams()
        config = RepoConfig(
            FORMAT_VERSION,
            os.urandom(16).hex(),
            params.min_size,
            params.avg_size,
            params.max_size,
        )
        key_file = make_key_file(master, password, kdf, created, hostname, username)
        raw_key = key_file.to_json()
        key_id = crypto.storage_id(raw_key)
        backend.save(key_name(key_id), raw_key)
        sealed = crypto.seal(master, b"config", msgspec.msgpack.encode(config))
        backend.save("config", CONFIG_MAGIC + sealed)
        return cls(backend, master, config, key_id)

    @classmethod
    def open(cls, backend: Backend, password: bytes) -> Repository:
        try:
            raw_config = backend.load("config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"{backend.location}: no strongroom repository there"
            ) from None
        damaged: list[str] = []
        for info in backend.list("keys/"):
            key_id = info.name.rsplit("/", 1)[-1]
            try:
                raw = backend.load(info.name)
                key_file = KeyFile.from_json(raw, f"key {key_id[:8]}")
                master = open_key_file(key_file, password)
            except IntegrityError as e:
                damaged.append(str(e))
                continue
            if master is not None:
                config = cls._read_config(master, raw_config)
                return cls(backend, master, config, key_id)
        if damaged:
            raise WrongPasswordError(
                "no key file opens with this password (damaged key files: "
                + "; ".join(damaged)
                + ")"
            )
        raise WrongPasswordError("wrong password: no key file of this repository opens with it")

    @staticmethod
    def _read_config(master: MasterKey, raw: bytes) -> RepoConfig:
        if not raw.startswith(CONFIG_MAGIC):
            raise IntegrityError("config: not a strongroom repository config (damaged?)")
        plain = crypto.unseal(master, b"config", raw[len(CONFIG_MAGIC) :], "config")
        config = decode_as(plain, RepoConfig, "config", "config")
        if config.version != FORMAT_VERSION:
            raise IntegrityError(f"config: repository format {config.version} is not supported")
        if not (
            64 <= config.chunker_min <= config.chunker_avg <= config.chunker_max <= 16 << 20
            and config.chunker_avg <= 4 << 20
            and config.chunker_min <= 1 << 20
            and -7 <= config.compression_level <= 22
        ):
            raise IntegrityError("config: chunker or compression parameters out of range")
        return config

    # --- keys -----------------------------------------------------------------------

    def add_key(
        self, password: bytes, *, kdf: KdfParams, created: str, hostname: str, username: str
    ) -> str:
        key_file = make_key_file(self.master, password, kdf, created, hostname, username)
        raw = key_file.to_json()
        key_id = crypto.storage_id(raw)
        self.backend.save(key_name(key_id), raw)
        return key_id

    def list_keys(self) -> list[KeyInfo]:
        keys = []
        for info in self.backend.list("keys/"):
            key_id = info.name.rsplit("/", 1)[-1]
            current = key_id == self.key_id
            try:
                raw = self.backend.load(info.name)
                kf = KeyFile.from_json(raw, f"key {key_id[:8]}")
            except IntegrityError:
                keys.append(KeyInfo(key_id, "?", "?", "?", current, damaged=True))
                continue
            # Fields outside the sealed master key (host, user, time) are covered by the
            # name: a key file's name is the SHA-256 of its bytes.
            damaged = crypto.storage_id(raw) != key_id
            keys.append(KeyInfo(key_id, kf.created, kf.hostname, kf.username, current, damaged))
        return keys

    def resolve_key(self, prefix: str) -> str:
        matches = [k.id for k in self.list_keys() if k.id.startswith(prefix)]
        if len(matches) != 1:
            raise UsageError(f"key {prefix!r} matches {len(matches)} keys; give more digits")
        return matches[0]

    def remove_key(self, key_id: str) -> None:
        if key_id == self.key_id:
            raise UsageError(
                "refusing to remove the key this command opened the repository with",
                hint="open with another key's password to remove this one",
            )
        if len(self.list_keys()) <= 1:
            raise UsageError("refusing to remove the last key: the repository would be lost")
        self.backend.remove(key_name(key_id))

    # --- index ----------------------------------------------------------------------

    def load_index(self) -> None:
        """Read every index file; damaged ones are recorded in ``index_errors``.

        Packs named by a gc marker are added last, so a blob stored twice is found in
        the pack that stays. Call it after taking the repository lock: a collector
        relies on writers that lock before it marks being named in its marker, and on
        the others seeing the marker here.
        """
        for attempt in range(1, INDEX_LOAD_ATTEMPTS + 1):
            if self._load_index_once(retry=attempt < INDEX_LOAD_ATTEMPTS):
                return

    def _load_index_once(self, *, retry: bool) -> bool:
        """False when a listed index file vanished (a collector replaced it)."""
        loaded_at = self.clock.monotonic()
        markers, damaged_markers = gc.read_markers(self.backend, self.master)
        errors = list(damaged_markers.values())
        condemned = {pack_id for m in markers for pack_id in m.marker.candidates}
        packs = {name for name, _ in self.packs()}
        infos = list(self.backend.list("index/"))
        expected = sum(i.size for i in infos) // MIN_INDEX_ENTRY_BYTES + 1024
        index = ChunkIndex(expected)
        names: list[str] = []
        missing: set[str] = set()
        marked: list[tuple[str, list[RawBlob]]] = []
        for info in infos:
            try:
                described = self.read_index_packs(info.name)
            except ObjectNotFound as e:
                if retry:
                    return False
                errors.append(str(e))
                continue
            except IntegrityError as e:
                errors.append(str(e))
                continue
            for pack_id, blobs in described:
                if pack_id not in packs:
                    missing.add(pack_id)
                elif pack_id in condemned:
                    marked.append((pack_id, blobs))
                else:
                    index.add_blobs(pack_id, blobs)
            names.append(info.name)
        for pack_id, blobs in marked:
            index.add_blobs(pack_id, blobs)
        with self._index_lock:
            self.index = index
            self.index_errors = errors
            self.damaged_markers = damaged_markers
            self.index_files = names
            self.missing_packs = missing
            self.condemned = condemned
            self._markers_seen = {m.name for m in markers}
            self._index_files_read = set(names)
            self._index_loaded_at = loaded_at
        return True

    def read_index_file(self, name: str) -> list[tuple[str, PackEntry]]:
        """One index file's entries, authenticated; IntegrityError or ObjectNotFound."""
        return [
            (pack_id, PackEntry(*blob))
            for pack_id, blobs in self.read_index_packs(name)
            for blob in blobs
        ]

    def read_index_packs(self, name: str) -> list[tuple[str, list[RawBlob]]]:
        """One index file's packs with their blobs as validated tuples (no objects per
        blob); IntegrityError or ObjectNotFound."""
        short = name.rsplit("/", 1)[-1]
        what = f"index {short[:8]}"
        raw = self.backend.load(name)
        if crypto.storage_id(raw) != short:
            raise IntegrityError(f"{what}: contents do not match its name")
        return decode_index_packs(crypto.unseal(self.master, b"index", raw, what), what)

    def refresh_index(self) -> None:
        """Add the index files written since ``load_index`` (other writers', or a
        collector's after repacking); a copy in an unmarked pack wins."""
        for info in list(self.backend.list("index/")):
            if info.name in self._index_files_read:
                continue
            try:
                entries = self.read_index_file(info.name)
            except (IntegrityError, ObjectNotFound):
                continue  # a damaged file is check's business; a vanished one was replaced
            with self._index_lock:
                for pack_id, entry in entries:
                    loc = self.index.get(entry.id)
                    if loc is None or (
                        loc.pack_id in self.condemned and pack_id not in self.condemned
                    ):
                        self.index.add(pack_id, entry, replace=True)
                self._index_files_read.add(info.name)

    # --- garbage collection: the writer's side ---------------------------------------

    def sync_markers(self) -> None:
        """Read gc markers written since the index was loaded: their packs are no
        longer offered for deduplication. Damaged markers are ignored here (a
        collector cannot sweep them either; check reports them)."""
        markers, _ = gc.read_markers(self.backend, self.master, skip=self._markers_seen)
        with self._index_lock:
            for m in markers:
                self.condemned.update(m.marker.candidates)
                self._markers_seen.add(m.name)

    def condemn(self, pack_ids: set[str]) -> None:
        with self._index_lock:
            self.condemned.update(pack_ids)

    def relied_packs(self) -> set[str]:
        with self._index_lock:
            return set(self._relied)

    def mark_lost(self, pack_ids: set[str]) -> None:
        with self._index_lock:
            self.lost_packs.update(pack_ids)

    def index_age_s(self) -> float:
        return self.clock.monotonic() - self._index_loaded_at

    def has_unmarked_copy(self, bid: bytes, other_than: str) -> bool:
        """Whether the index places the blob in a pack no marker names (but that one)."""
        with self._index_lock:
            loc = self.index.get(bid)
            return (
                loc is not None
                and loc.pack_id != other_than
                and (loc.pack_id not in self.condemned)
            )

    def lookup(self, bid: bytes) -> BlobLocation | None:
        with self._index_lock:
            return self.index.get(bid)

    def has_blob(self, bid: bytes) -> bool:
        """Whether a writer may reuse the stored blob (deduplicate against it). Blobs
        only in packs a gc marker names do not count; the pack of one that does is
        remembered, and checked again before the snapshot is written."""
        with self._index_lock:
            pack_id = self.index.pack_of(bid)
            if pack_id is None or pack_id in self.condemned:
                return False
            self._relied.add(pack_id)
            return True

    def has_blobs(self, bids: list[bytes | int]) -> bool:
        """``has_blob`` for every id of a file's content (holes, ints, pass), at once."""
        with self._index_lock:
            index, condemned = self.index, self.condemned
            packs = []
            for bid in bids:
                if isinstance(bid, int):
                    continue
                pack_id = index.pack_of(bid)
                if pack_id is None or pack_id in condemned:
                    return False
                packs.append(pack_id)
            self._relied.update(packs)
            return True

    def new_pack_writer(self, *, staged: bool = False) -> PackWriter:
        """A pack writer; ``staged`` ones write to storage as they go (less memory)."""
        sink = self.backend.stage("data/") if staged else None
        return PackWriter(self.master, self.config.compression_level, sink)

    def upload_pack(self, writer: PackWriter) -> tuple[str, int]:
        """Store a full pack, then make its blobs known. Returns (pack id, stored bytes)."""
        pack_id, data = writer.finish()
        if data is None:
            assert writer.sink is not None
            writer.sink.publish(pack_name(pack_id))
        else:
            self.backend.save(pack_name(pack_id), data)
        self.add_pack(pack_id, writer.entries)
        return pack_id, writer.size

    def add_pack(self, pack_id: str, entries: list[PackEntry]) -> None:
        """Make the blobs of a pack just stored known (to this process, and to the next
        index file ``flush_index`` writes)."""
        with self._index_lock:
            for entry in entries:
                self.index.add(pack_id, entry, replace=True)
            self._pending[pack_id] = list(entries)

    def reject_pack(self, pack_id: str) -> None:
        """A stored pack did not read back intact: no index file will name it, and it
        is never offered for deduplication again (its blobs are stored anew). A writer
        that relied on it meanwhile fails at its commit check (gc.protect_commit)."""
        with self._index_lock:
            self._pending.pop(pack_id, None)
            self.condemned.add(pack_id)

    def pending_packs(self) -> int:
        with self._index_lock:
            return len(self._pending)

    def flush_index(self) -> str | None:
        """Write an index file for packs stored since the last flush (a checkpoint).

        Flushes are serialized: when it returns, every pack uploaded before the call is
        described by a durable index file, even one another thread was still writing.
        A snapshot written after it therefore never names unindexed data.
        """
        with self._flush_lock:
            with self._index_lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return None
            return self.write_index(pending)

    def write_index(self, packs: dict[str, list[PackEntry]]) -> str:
        raw = crypto.seal(self.master, b"index", encode_index(packs))
        name = f"index/{crypto.storage_id(raw)}"
        self.backend.save(name, raw)
        return name

    # --- blobs ----------------------------------------------------------------------

    def pack_cipher(self, pack_id: str) -> PackCipher:
        with self._cipher_lock:
            cipher = self._ciphers.get(pack_id)
            if cipher is not None:
                self._ciphers.move_to_end(pack_id)
                return cipher
        start = self.backend.load(pack_name(pack_id), 0, DATA_OFFSET)
        cipher = cipher_for(self.master, start, f"pack {pack_id[:8]}")
        with self._cipher_lock:
            self._ciphers[pack_id] = cipher
            if len(self._ciphers) > 256:
                self._ciphers.popitem(last=False)
        return cipher

    def load_blob(self, bid: bytes, expected_type: int | None = None) -> bytes:
        """A blob's plaintext, authenticated and checked against its id."""
        what = f"blob {bid.hex()[:16]}"
        loc = self.lookup(bid)
        if loc is None:
            raise IntegrityError(f"{what}: not in the index (missing data)")
        if expected_type is not None and loc.type != expected_type:
            raise IntegrityError(f"{what}: stored as the wrong type")
        try:
            cipher = self.pack_cipher(loc.pack_id)
            ciphertext = self.backend.load(pack_name(loc.pack_id), loc.offset, loc.length)
        except ObjectNotFound as e:
            raise IntegrityError(f"{what}: pack {loc.pack_id[:8]} is missing ({e})") from None
        return open_blob(self.master, cipher, loc.entry(bid), ciphertext, what)

    # --- snapshots ------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> str:
        """Write a snapshot, once no data it reuses can have been collected meanwhile
        (CollectedMeanwhile, exit 11, if some was)."""
        gc.protect_commit(self, snapshot)
        raw = crypto.seal(self.master, b"snapshot", encode_snapshot(snapshot))
        snapshot_id = crypto.storage_id(raw)
        self.backend.save(f"snapshots/{snapshot_id}", raw)
        return snapshot_id

    def snapshot_ids(self) -> list[str]:
        return [i.name.rsplit("/", 1)[-1] for i in self.backend.list("snapshots/")]

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        what = f"snapshot {snapshot_id[:8]}"
        try:
            raw = self.backend.load(f"snapshots/{snapshot_id}")
        except ObjectNotFound:
            raise UsageError(f"{what}: no such snapshot") from None
        if crypto.storage_id(raw) != snapshot_id:
            raise IntegrityError(f"{what}: contents do not match its name")
        return decode_snapshot(crypto.unseal(self.master, b"snapshot", raw, what), snapshot_id)

    def snapshots(
        self, on_error: Callable[[str, IntegrityError], None] | None = None
    ) -> list[Snapshot]:
        """All readable snapshots, oldest first; damaged ones go to ``on_error`` or raise."""
        result = []
        for sid in self.snapshot_ids():
            try:
                result.append(self.load_snapshot(sid))
            except IntegrityError as e:
                if on_error is None:
                    raise
                on_error(sid, e)
        result.sort(key=lambda s: (s.time_ns, s.id))
        return result

    def remove_snapshot(self, snapshot_id: str) -> None:
        self.backend.remove(f"snapshots/{snapshot_id}")

    def packs(self) -> Iterator[tuple[str, int]]:
        for info in self.backend.list("data/"):
            yield info.name.rsplit("/", 1)[-1], info.size
