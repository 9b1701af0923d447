"""Volumes: a set of snapshots as tar archives, for removable and sequential media.

A *set* is every repository object a chosen set of snapshots needs (their packs, an
index file describing exactly those packs, the snapshots, plus the repository's config
and key files), laid out over one or more *volumes* of at most a fixed size. Each
volume is a plain POSIX (ustar) tar archive whose members are those objects under their
repository names, so ``tar -x`` of every volume rebuilds a repository directory. The
first member, ``STRONGROOM-VOLUME.json``, is the volume's label: volume id, set id,
sequence number and total, every label of the set, creation time, repository id, the
snapshots, and the list of members that follow. An object that does not fit in what
is left of a volume is split: its parts are members named ``NAME.part001``,
``NAME.part002``, ... on consecutive volumes, and the labels say where each part goes.
See docs/media.md.

Volumes are written strictly sequentially, one 10 KiB tar record per write (tar's
default blocking factor), so a tape drive or a pipe can take them. Reading is sequential
too. Every object is checked against its SHA-256 on export and import, and on import
every pack is authenticated blob by blob, every index and snapshot decrypted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

from strongroom.backend import Backend, MemoryBackend, ObjectNotFound
from strongroom.engine.walk import load_tree
from strongroom.errors import (
    IntegrityError,
    RepositoryNotFound,
    UsageError,
)
from strongroom.repository import DATA, TREE, Repository, Snapshot, crypto, gc
from strongroom.repository.index import decode_index, encode_index
from strongroom.repository.pack import (
    PackEntry,
    PackWriter,
    cipher_for,
    open_blob,
    pack_name,
    read_header,
)
from strongroom.repository.snapshot import decode_snapshot

FORMAT = "strongroom volume 1"
LABEL_MEMBER = "STRONGROOM-VOLUME.json"
BLOCK = 512
RECORD = 20 * BLOCK  # tar's default blocking factor: every write is one 10 KiB record
END_OF_ARCHIVE = 2 * BLOCK
MIN_VOLUME_SIZE = 10 * RECORD
MAX_LABEL = 16 * 1024 * 1024
# The largest object a volume may carry: reassembled in memory on import.
MAX_OBJECT = 1 << 30
OBJECT_NAME = re.compile(
    r"config|keys/[0-9a-f]{64}|data/([0-9a-f]{2})/(?=\1)[0-9a-f]{64}"
    r"|index/[0-9a-f]{64}|snapshots/[0-9a-f]{64}"
)
LABEL_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_valid_label(label: str) -> bool:
    """A label usable as a file name and in a tar member: letters, digits, ``._-``."""
    return LABEL_TEXT.fullmatch(label) is not None


class VolumeDamaged(IntegrityError):
    """A volume is damaged, truncated, or not a strongroom volume."""

    hint = "read the volume again (another drive), or use another copy of the set"


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    assert len(header) == BLOCK, name
    return header


# --- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeObject:
    """A repository object a set carries: its name, size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Piece:
    """One tar member: the whole object (``part`` 0) or part ``part`` of a split one."""

    object: VolumeObject
    offset: int
    length: int
    part: int = 0

    @property
    def member(self) -> str:
        return self.object.name if self.part == 0 else f"{self.object.name}.part{self.part:03d}"


@dataclass(frozen=True)
class PlannedVolume:
    sequence: int  # 1-based
    label: str
    volume_id: str
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class ExportPlan:
    set_id: str
    repository_id: str
    created_ns: int
    capacity: int  # bytes per volume, a multiple of RECORD
    snapshots: tuple[str, ...]
    volumes: tuple[PlannedVolume, ...]
    # The bytes of the small objects (config, keys, the set's index, snapshots); packs
    # are read from the repository while the volumes are written.
    inline: dict[str, bytes]
    objects: int
    total_bytes: int  # the objects' total size

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.volumes]

    def label_document(self, volume: PlannedVolume) -> bytes:
        secs = self.created_ns // 1_000_000_000
        doc = {
            "format": FORMAT,
            "label": volume.label,
            "volume_id": volume.volume_id,
            "set_id": self.set_id,
            "sequence": volume.sequence,
            "total": len(self.volumes),
            "labels": self.labels,
            "created": datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "repository_id": self.repository_id,
            "volume_size": self.capacity,
            "record_size": RECORD,
            "snapshots": list(self.snapshots),
            "members": [
                {
                    "member": p.member,
                    "object": p.object.name,
                    "offset": p.offset,
                    "length": p.length,
                    "size": p.object.size,
                    "sha256": p.object.sha256,
                }
                for p in volume.pieces
            ],
        }
        return json.dumps(doc, indent=1).encode() + b"\n"


def layout(
    head: Sequence[VolumeObject],
    payload: Sequence[VolumeObject],
    capacity: int,
    reserved: int,
) -> list[list[Piece]]:
    """Pieces per volume: ``head`` objects whole at the start of every volume, then the
    payload in order, split where a volume ends. ``reserved`` bytes are kept for the
    label member. Pure: the same input always gives the same layout."""
    usable = capacity - END_OF_ARCHIVE - reserved
    head_pieces = [Piece(obj, 0, obj.size) for obj in head]
    head_bytes = sum(BLOCK + _padded(obj.size) for obj in head)
    if head_bytes + 2 * BLOCK > usable:
        raise UsageError(
            f"a volume of {capacity} bytes cannot hold its label, the repository config "
            "and key files and some data",
            hint="give a larger --volume-size",
        )
    volumes: list[list[Piece]] = []
    current, room = list(head_pieces), usable - head_bytes
    for obj in payload:
        offset, part = 0, 0
        while True:
            remaining = obj.size - offset
            need = BLOCK + _padded(remaining)
            if need <= room:
                current.append(Piece(obj, offset, remaining, 0 if offset == 0 else part + 1))
                room -= need
                break
            fit = (room - BLOCK) // BLOCK * BLOCK
            if fit >= BLOCK:
                part += 1
                current.append(Piece(obj, offset, fit, part))
                offset += fit
            volumes.append(current)
            current, room = list(head_pieces), usable - head_bytes
    volumes.append(current)
    return volumes


def plan_export(
    repo: Repository,
    snapshots: Sequence[Snapshot],
    volume_size: int,
    label_for: Callable[[int], str],
    created_ns: int,
    set_id: str | None = None,
) -> ExportPlan:
    """Everything ``snapshots`` need, laid out over volumes of at most ``volume_size``.

    ``label_for(n)`` names volume ``n`` (1-based). Raises IntegrityError when a
    snapshot needs data the repository lacks, UsageError when the volumes are too small.
    """
    if not snapshots:
        raise UsageError("no snapshots to export")
    capacity = volume_size // RECORD * RECORD
    if capacity < MIN_VOLUME_SIZE:
        raise UsageError(f"--volume-size must be at least {MIN_VOLUME_SIZE} bytes")
    inline: dict[str, bytes] = {}

    def keep(name: str, raw: bytes) -> VolumeObject:
        inline[name] = raw
        return VolumeObject(name, len(raw), _sha256(raw))

    head = [keep("config", repo.backend.load("config"))]
    for info in repo.backend.list("keys/"):
        raw = repo.backend.load(info.name)
        if _sha256(raw) == info.name.rsplit("/", 1)[-1]:  # damaged key files stay behind
            head.append(keep(info.name, raw))
    packs = needed_packs(repo, snapshots)
    payload = [VolumeObject(pack_name(p), repo.backend.stat(pack_name(p)).size, p) for p in packs]
    index = set_index(repo, packs)
    payload.append(keep(f"index/{crypto.storage_id(index)}", index))
    for snap in snapshots:
        raw = repo.backend.load(f"snapshots/{snap.id}")
        if _sha256(raw) != snap.id:
            raise IntegrityError(f"snapshot {snap.id[:8]}: contents do not match its name")
        payload.append(keep(f"snapshots/{snap.id}", raw))
    for obj in payload:
        if obj.size > MAX_OBJECT:
            raise UsageError(f"{obj.name} is larger than a volume set may carry ({MAX_OBJECT})")

    set_id = set_id or uuid.uuid4().hex
    volume_ids: list[str] = []
    reserved = 4 * BLOCK
    for _ in range(32):
        pieces = layout(head, payload, capacity, reserved)
        while len(volume_ids) < len(pieces):
            volume_ids.append(uuid.uuid4().hex)
        plan = ExportPlan(
            set_id=set_id,
            repository_id=repo.id,
            created_ns=created_ns,
            capacity=capacity,
            snapshots=tuple(s.id for s in snapshots),
            volumes=tuple(
                PlannedVolume(n, label_for(n), volume_ids[n - 1], tuple(p))
                for n, p in enumerate(pieces, 1)
            ),
            inline=inline,
            objects=len(head) + len(payload),
            total_bytes=sum(o.size for o in (*head, *payload)),
        )
        need = max(BLOCK + _padded(len(plan.label_document(v))) for v in plan.volumes)
        if need <= reserved:
            return plan
        reserved = need + 2 * BLOCK
    raise AssertionError("volume layout did not settle")


def needed_packs(repo: Repository, snapshots: Sequence[Snapshot]) -> list[str]:
    """The packs holding every tree and data blob of ``snapshots``, in first-use order."""
    packs: dict[str, None] = {}
    seen: set[bytes] = set()

    def locate(bid: bytes, blob_type: int, snap: Snapshot) -> None:
        loc = repo.lookup(bid)
        if loc is None or loc.type != blob_type:
            raise IntegrityError(
                f"snapshot {snap.id[:8]} ({snap.client}) needs blob {bid.hex()[:16]}, which "
                "the repository lacks",
                hint="run `strongroom check` on the repository",
            )
        packs.setdefault(loc.pack_id)

    for snap in snapshots:
        stack = [snap.tree]
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            locate(tree_id, TREE, snap)
            for node in load_tree(repo, tree_id):
                for item in node.content:
                    if isinstance(item, bytes):
                        locate(item, DATA, snap)
                if node.subtree is not None:
                    stack.append(node.subtree)
    return list(packs)


def set_index(repo: Repository, packs: Sequence[str]) -> bytes:
    """A sealed index file describing exactly ``packs``, from the repository's own."""
    wanted = set(packs)
    found: dict[str, dict[bytes, PackEntry]] = {}
    for name in repo.index_files:
        short = name.rsplit("/", 1)[-1]
        raw = repo.backend.load(name)
        if crypto.storage_id(raw) != short:
            raise IntegrityError(f"index {short[:8]}: contents do not match its name")
        plain = crypto.unseal(repo.master, b"index", raw, f"index {short[:8]}")
        for pack_id, entry in decode_index(plain, f"index {short[:8]}"):
            if pack_id in wanted:
                found.setdefault(pack_id, {})[entry.id] = entry
    missing = wanted - found.keys()
    if missing:
        raise IntegrityError(f"no index file describes pack(s) {', '.join(sorted(missing))[:80]}")
    doc = {p: sorted(found[p].values(), key=lambda e: e.offset) for p in packs}
    return crypto.seal(repo.master, b"index", encode_index(doc))


# --- writing --------------------------------------------------------------------------


class VolumeOutput(Protocol):
    """Where one volume goes: written front to back, never sought."""

    def write(self, data: bytes | memoryview) -> None:
        """Write all of ``data`` (one tar record)."""

    def close(self) -> None:
        """Finish the volume (flush, sync, close)."""


@dataclass(frozen=True)
class WrittenVolume:
    sequence: int
    label: str
    volume_id: str
    size: int
    full: bool  # another volume of the set follows this one


class _Records:
    """Hands the output whole tar records, one per write."""

    def __init__(self, out: VolumeOutput) -> None:
        self.out = out
        self.buf = bytearray()
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.buf:
            take = RECORD - len(self.buf)
            self.buf += view[:take]
            view = view[take:]
            if len(self.buf) < RECORD:
                return
            self._emit(bytes(self.buf))
            self.buf = bytearray()
        whole = len(view) // RECORD * RECORD
        for start in range(0, whole, RECORD):
            self._emit(view[start : start + RECORD])
        self.buf += view[whole:]

    def finish(self) -> None:
        """End of archive (two zero blocks), then zeros to the end of the record."""
        self.write(bytes(END_OF_ARCHIVE))
        if self.buf:
            self.write(bytes(RECORD - len(self.buf)))

    def _emit(self, record: bytes | memoryview) -> None:
        self.out.write(record)
        self.written += len(record)


def write_volumes(
    backend: Backend,
    plan: ExportPlan,
    open_volume: Callable[[PlannedVolume], VolumeOutput],
    on_volume: Callable[[WrittenVolume], None] | None = None,
) -> list[WrittenVolume]:
    """Write every volume of ``plan`` in order, reading packs from ``backend``.

    Each object is checked against its SHA-256 as it is read; IntegrityError stops
    the export (the volumes written so far are then useless).
    """
    mtime = plan.created_ns // 1_000_000_000
    written: list[WrittenVolume] = []
    cached: tuple[str, bytes] | None = None
    for volume in plan.volumes:
        out = open_volume(volume)
        records = _Records(out)
        try:
            label = plan.label_document(volume)
            records.write(_member_header(LABEL_MEMBER, len(label), mtime))
            records.write(label + bytes(_padded(len(label)) - len(label)))
            for piece in volume.pieces:
                if cached is None or cached[0] != piece.object.name:
                    cached = (piece.object.name, _load(backend, plan, piece.object))
                data = memoryview(cached[1])[piece.offset : piece.offset + piece.length]
                records.write(_member_header(piece.member, piece.length, mtime))
                records.write(data)
                records.write(bytes(_padded(piece.length) - piece.length))
            records.finish()
        finally:
            out.close()
        assert records.written <= plan.capacity
        done = WrittenVolume(
            volume.sequence,
            volume.label,
            volume.volume_id,
            records.written,
            full=volume.sequence < len(plan.volumes),
        )
        written.append(done)
        if on_volume is not None:
            on_volume(done)
    return written


def _load(backend: Backend, plan: ExportPlan, obj: VolumeObject) -> bytes:
    data = plan.inline.get(obj.name)
    if data is None:
        try:
            data = backend.load(obj.name)
        except ObjectNotFound:
            raise IntegrityError(f"{obj.name}: missing from the repository") from None
    if len(data) != obj.size or _sha256(data) != obj.sha256:
        raise IntegrityError(f"{obj.name}: contents do not match its name (damaged)")
    return data


# --- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberEntry:
    member: str
    object: str
    offset: int
    length: int
    size: int
    sha256: str


@dataclass(frozen=True)
class VolumeLabel:
    label: str
    volume_id: str
    set_id: str
    sequence: int
    total: int
    labels: tuple[str, ...]
    created: str
    repository_id: str
    volume_size: int
    snapshots: tuple[str, ...]
    members: tuple[MemberEntry, ...]

    @property
    def what(self) -> str:
        return f"volume {self.label} ({self.sequence} of {self.total} of set {self.set_id[:8]})"


def parse_label(data: bytes, what: str) -> VolumeLabel:
    """A label member's JSON, checked field by field; IntegrityError when malformed."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT!r} label")
        labels = tuple(_text(x) for x in _list(doc["labels"]))
        total = _int(doc["total"])
        sequence = _int(doc["sequence"])
        if not 1 <= sequence <= total or len(labels) != total:
            raise ValueError("sequence, total and labels disagree")
        members = tuple(_member(m) for m in _list(doc["members"]))
        label = VolumeLabel(
            label=_text(doc["label"]),
            volume_id=_text(doc["volume_id"]),
            set_id=_text(doc["set_id"]),
            sequence=sequence,
            total=total,
            labels=labels,
            created=_text(doc["created"]),
            repository_id=_text(doc["repository_id"]),
            volume_size=_int(doc["volume_size"]),
            snapshots=tuple(_hex64(x) for x in _list(doc["snapshots"])),
            members=members,
        )
        if labels[sequence - 1] != label.label:
            raise ValueError("its label is not in its place in the set's labels")
        return label
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise VolumeDamaged(f"{what}: damaged volume label ({e})") from None


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise TypeError("expected a short text")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise TypeError("expected a count")
    return value


def _hex64(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise TypeError("expected a SHA-256 in hex")
    return value


def _member(doc: Any) -> MemberEntry:
    if not isinstance(doc, dict):
        raise TypeError("expected a member")
    entry = MemberEntry(
        member=_text(doc["member"]),
        object=_text(doc["object"]),
        offset=_int(doc["offset"]),
        length=_int(doc["length"]),
        size=_int(doc["size"]),
        sha256=_hex64(doc["sha256"]),
    )
    if not OBJECT_NAME.fullmatch(entry.object):
        raise ValueError(f"{entry.object!r} is not a repository object")
    if entry.member != entry.object and not re.fullmatch(
        re.escape(entry.object) + r"\.part\d{3,}", entry.member
    ):
        raise ValueError(f"member {entry.member!r} does not name object {entry.object!r}")
    if entry.size > MAX_OBJECT or entry.offset + entry.length > entry.size:
        raise ValueError(f"member {entry.member!r}: impossible offset or size")
    if entry.object != "config" and entry.sha256 != entry.object.rsplit("/", 1)[-1]:
        raise ValueError(f"member {entry.member!r}: its hash is not its name")
    return entry


def _tar(stream: BinaryIO, what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", bufsize=RECORD)
    except (tarfile.TarError, EOFError) as e:
        raise VolumeDamaged(f"{what}: not a tar archive, or damaged ({e})") from None


def _read_label(tar: tarfile.TarFile, what: str) -> VolumeLabel:
    try:
        info = tar.next()
        if info is None or info.name != LABEL_MEMBER or not info.isreg():
            raise VolumeDamaged(f"{what}: not a strongroom volume (no label member first)")
        if info.size > MAX_LABEL:
            raise VolumeDamaged(f"{what}: damaged volume label (impossible size)")
        member = tar.extractfile(info)
        assert member is not None
        data = member.read()
    except (tarfile.TarError, EOFError) as e:
        raise VolumeDamaged(f"{what}: damaged or truncated volume ({e})") from None
    if len(data) != info.size:
        raise VolumeDamaged(f"{what}: truncated in its label")
    return parse_label(data, what)


def _open_volume(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except OSError as e:
        raise UsageError(f"cannot read volume {path}: {e.strerror}") from None


def read_label(path: str) -> VolumeLabel:
    """The label of the volume at ``path`` (reads only its first member)."""
    with _open_volume(path) as stream:
        return _read_label(_tar(stream, path), path)


def check_set(labels: Sequence[tuple[VolumeLabel, str]]) -> None:
    """Raise UsageError unless ``labels`` (label, where it was read) are every volume of
    one set, each once. The error names the volumes that are missing."""
    first, _ = labels[0]
    seen: dict[int, str] = {}
    for label, path in labels:
        _consistent(first, label, path)
        if label.sequence in seen:
            raise UsageError(f"{label.what} is given twice: {seen[label.sequence]} and {path}")
        seen[label.sequence] = path
    _complete_set(first, seen)


def _consistent(first: VolumeLabel, label: VolumeLabel, path: str) -> None:
    if label.set_id != first.set_id:
        raise UsageError(
            f"{path}: volume {label.label} belongs to set {label.set_id[:8]}, "
            f"not to set {first.set_id[:8]} like volume {first.label}",
            hint="import one set at a time",
        )
    if (label.total, label.labels, label.repository_id, label.snapshots) != (
        first.total,
        first.labels,
        first.repository_id,
        first.snapshots,
    ):
        raise VolumeDamaged(
            f"{path}: {label.what} disagrees with volume {first.label} about its set"
        )


def _complete_set(first: VolumeLabel, seen: dict[int, str]) -> None:
    missing = [
        f"{first.labels[n - 1]} ({n} of {first.total})"
        for n in range(1, first.total + 1)
        if n not in seen
    ]
    if missing:
        raise UsageError(
            f"set {first.set_id[:8]} is incomplete: volume {', '.join(missing)} is missing",
            hint="give every volume of the set, in any order",
        )


@dataclass
class ImportResult:
    set_id: str = ""
    repository_id: str = ""
    created: bool = False  # a new repository was made from the volumes
    volumes: list[str] = field(default_factory=list)  # labels, in the order read
    objects_written: int = 0
    objects_present: int = 0  # the target had them already
    bytes_written: int = 0
    packs_verified: int = 0
    blobs_verified: int = 0
    snapshots_imported: list[str] = field(default_factory=list)
    snapshots_present: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # snapshots not imported, and why


@dataclass
class _Partial:
    size: int
    sha256: str
    parts: dict[int, bytes] = field(default_factory=dict)
    have: int = 0
    volumes: list[str] = field(default_factory=list)  # labels of the volumes with parts


class VolumeImporter:
    """Rebuilds repository objects from the volumes of one set into ``target``.

    Into an empty (or absent) location it recreates the repository: config and key
    files first, so the original password opens it. Into the repository the volumes
    came from (same id) it adds what is missing; key files are then left alone, so a
    removed password does not come back. Packs are written as they are verified, the
    index files after every pack, and each snapshot last, once every blob it names is
    known to be there.
    """

    def __init__(
        self,
        target: Backend,
        password: bytes,
        on_volume: Callable[[VolumeLabel], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        # Raises to refuse writing the index and snapshots (a lock whose lease ran out).
        self.before_commit = before_commit or (lambda: None)
        self.password = password
        self.on_volume = on_volume or (lambda label: None)
        self.result = ImportResult()
        self._set: VolumeLabel | None = None
        self._seen: dict[int, str] = {}
        self._partials: dict[str, _Partial] = {}
        self._done: dict[str, str] = {}  # object name -> SHA-256
        self._head: dict[str, bytes] = {}  # config and key files
        self._repo: Repository | None = None
        self._indexes: dict[str, bytes] = {}
        self._snapshots: dict[str, tuple[bytes, Snapshot]] = {}

    def run(self, paths: Sequence[str]) -> ImportResult:
        """Import the volumes at ``paths``, given in any order.

        When every path is a regular file, all labels are read first, so a missing or
        foreign volume is reported before anything is written; volumes on pipes and
        devices are read once each, in the order given, and checked as they come.
        Raises UsageError (missing volumes, a foreign target), IntegrityError (a
        damaged or truncated volume), WrongPasswordError.
        """
        if not paths:
            raise UsageError("no volumes given")
        if all(_is_regular(p) for p in paths):
            labels = [(read_label(p), p) for p in paths]
            check_set(labels)
            self._set = labels[0][0]
            for label, path in sorted(labels, key=lambda item: item[0].sequence):
                self._read_volume(path, label)
        else:
            for path in paths:
                self._read_volume(path, None)
            assert self._set is not None
            _complete_set(self._set, self._seen)
        self._finish()
        return self.result

    # --- volumes and members --------------------------------------------------------

    def _admit(self, label: VolumeLabel, path: str) -> None:
        if self._set is None:
            self._set = label
        _consistent(self._set, label, path)
        if label.sequence in self._seen:
            raise UsageError(
                f"{label.what} is given twice: {self._seen[label.sequence]} and {path}"
            )
        self._seen[label.sequence] = path

    def _read_volume(self, path: str, expected: VolumeLabel | None) -> None:
        with _open_volume(path) as stream:
            tar = _tar(stream, path)
            label = _read_label(tar, path)
            if expected is None:
                self._admit(label, path)
            elif label != expected:
                raise VolumeDamaged(f"{path}: changed while it was being read")
            self.result.set_id, self.result.repository_id = label.set_id, label.repository_id
            what = f"{label.what} ({path})"
            try:
                for entry in label.members:
                    info = tar.next()
                    if info is None:
                        raise VolumeDamaged(
                            f"{what}: truncated or damaged: it ends before {entry.member}"
                        )
                    if info.name != entry.member or not info.isreg() or info.size != entry.length:
                        raise VolumeDamaged(
                            f"{what}: member {info.name!r} is not the {entry.member!r} "
                            "its label lists"
                        )
                    member = tar.extractfile(info)
                    assert member is not None
                    data = member.read()
                    if len(data) != entry.length:
                        raise VolumeDamaged(f"{what}: truncated in {entry.member}")
                    self._piece(entry, data, what, label.label)
                extra = tar.next()
                if extra is not None:
                    raise VolumeDamaged(f"{what}: member {extra.name!r} is not in its label")
            except VolumeDamaged:
                raise
            except IntegrityError as e:  # an object on it failed to authenticate
                raise VolumeDamaged(f"{what}: {e}") from None
            except (tarfile.TarError, EOFError) as e:
                raise VolumeDamaged(f"{what}: damaged or truncated ({e})") from None
            except OSError as e:
                raise VolumeDamaged(f"{what}: read error ({e.strerror or e})") from None
        self.result.volumes.append(label.label)
        self.on_volume(label)

    def _piece(self, entry: MemberEntry, data: bytes, what: str, volume: str) -> None:
        done = self._done.get(entry.object)
        if done is not None:  # config and key files are on every volume
            if done != entry.sha256:
                raise VolumeDamaged(f"{what}: {entry.object} differs from another volume's")
            return
        partial = self._partials.get(entry.object)
        if partial is None:
            if entry.offset == 0 and entry.length == entry.size:
                self._complete(entry.object, entry.sha256, data, what)
                return
            partial = self._partials[entry.object] = _Partial(entry.size, entry.sha256)
        elif (partial.size, partial.sha256) != (entry.size, entry.sha256):
            raise VolumeDamaged(f"{what}: the parts of {entry.object} disagree")
        if entry.offset in partial.parts:
            raise VolumeDamaged(f"{what}: a part of {entry.object} is there twice")
        partial.parts[entry.offset] = data
        partial.have += len(data)
        partial.volumes.append(volume)
        if partial.have < partial.size:
            return
        pieces, position = [], 0
        for offset in sorted(partial.parts):
            if offset != position:
                raise VolumeDamaged(f"{what}: the parts of {entry.object} overlap")
            pieces.append(partial.parts[offset])
            position += len(partial.parts[offset])
        del self._partials[entry.object]
        where = f"volume(s) {', '.join(partial.volumes)} (the parts of a split object)"
        self._complete(entry.object, entry.sha256, b"".join(pieces), where)

    def _complete(self, name: str, sha256: str, data: bytes, what: str) -> None:
        if _sha256(data) != sha256:
            raise VolumeDamaged(f"{what}: {name} is damaged (its SHA-256 does not match)")
        self._done[name] = sha256
        if name == "config" or name.startswith("keys/"):
            self._head[name] = data
            return
        repo = self._unlock(what)
        short = name.rsplit("/", 1)[-1]
        if name.startswith("data/"):
            self._verify_pack(repo, short, data)
            self._save(name, data)
        elif name.startswith("index/"):
            plain = crypto.unseal(repo.master, b"index", data, f"index {short[:8]}")
            for _ in decode_index(plain, f"index {short[:8]}"):
                pass
            self._indexes[name] = data
        else:
            plain = crypto.unseal(repo.master, b"snapshot", data, f"snapshot {short[:8]}")
            self._snapshots[short] = (data, decode_snapshot(plain, short))

    def _verify_pack(self, repo: Repository, pack_id: str, data: bytes) -> None:
        what = f"pack {pack_id[:8]}"
        entries = read_header(repo.master, data, what)
        cipher = cipher_for(repo.master, data, what)
        for entry in entries:
            chunk = data[entry.offset : entry.offset + entry.length]
            open_blob(repo.master, cipher, entry, chunk, f"{what} blob {entry.id.hex()[:16]}")
        self.result.packs_verified += 1
        self.result.blobs_verified += len(entries)

    def _save(self, name: str, data: bytes) -> None:
        try:
            self.target.stat(name)
        except ObjectNotFound:
            self.target.save(name, data)
            self.result.objects_written += 1
            self.result.bytes_written += len(data)
        else:
            self.result.objects_present += 1  # named by its hash: the same bytes

    # --- the repository -------------------------------------------------------------

    def _unlock(self, what: str) -> Repository:
        """The target repository, made from the volumes' config and keys if need be."""
        if self._repo is not None:
            return self._repo
        assert self._set is not None
        if "config" not in self._head:
            raise VolumeDamaged(f"{what}: no repository config before the data")
        carried = MemoryBackend("the volumes")
        carried.create()
        for name, data in self._head.items():
            carried.save(name, data)
        source = Repository.open(carried, self.password)
        if source.id != self._set.repository_id:
            raise VolumeDamaged(f"{what}: its config is not that of the repository it names")
        try:
            repo = Repository.open(self.target, self.password)
        except RepositoryNotFound:
            if self.target.exists() and any(True for _ in self.target.list("")):
                raise UsageError(
                    f"{self.target.location} is not empty, and not a strongroom repository",
                    hint="import into an empty directory, or into the repository the "
                    "volumes came from",
                ) from None
            self.target.create()
            for name in sorted(self._head):
                if name != "config":
                    self.target.save(name, self._head[name])
            self.target.save("config", self._head["config"])  # last: now it is a repository
            self.result.created = True
            self.result.objects_written += len(self._head)
            self.result.bytes_written += sum(len(d) for d in self._head.values())
            repo = Repository.open(self.target, self.password)
        if repo.id != source.id:
            raise UsageError(
                f"{self.target.location} holds repository {repo.id[:8]}; the volumes hold "
                f"repository {source.id[:8]}",
                hint="import into an empty directory, or into the repository the volumes came from",
            )
        self._repo = repo
        return repo

    def _finish(self) -> None:
        repo = self._repo
        assert self._set is not None
        if repo is None:
            raise IntegrityError(f"set {self._set.set_id[:8]}: the volumes hold no repository data")
        if self._partials:
            raise IntegrityError("incomplete objects: " + ", ".join(sorted(self._partials)))
        self.before_commit()
        for name in sorted(self._indexes):
            self._save(name, self._indexes[name])
        repo.load_index()
        existing = set(repo.snapshot_ids())
        rescue = _Rescue(repo)
        ready: list[tuple[str, bytes]] = []
        for sid in sorted(set(self._set.snapshots) | self._snapshots.keys()):
            if sid not in self._snapshots:
                self.result.errors.append(
                    f"snapshot {sid[:8]}: named by the labels but not on the volumes"
                )
                continue
            raw, snap = self._snapshots[sid]
            problem = rescue.missing_data(snap)
            if problem is not None:
                self.result.errors.append(
                    f"snapshot {sid[:8]} ({snap.client}) not imported: {problem}"
                )
            elif sid in existing:
                self.result.snapshots_present.append(sid)
                self.result.objects_present += 1
            else:
                ready.append((sid, raw))
        if not ready:
            return
        rescue.finish()
        self.before_commit()
        # Snapshots keep their ids (their bytes are written as they were), so they are
        # saved here rather than by Repository.save_snapshot, after the same check.
        gc.protect_commit(repo)
        for sid, raw in ready:
            self.target.save(f"snapshots/{sid}", raw)
            self.result.snapshots_imported.append(sid)
            self.result.objects_written += 1
            self.result.bytes_written += len(raw)


class _Rescue:
    """Checks that every blob of a snapshot is in the target, the way a writer must
    (repository/gc.py): a blob found only in a pack a collection has marked is not
    relied on but stored again, in a new pack, before the snapshot is written."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.writer: PackWriter | None = None
        self.stored: set[bytes] = set()
        self.verified: set[bytes] = set()  # trees whose whole subtree is there

    def missing_data(self, snap: Snapshot) -> str | None:
        """Why ``snap`` cannot be restored from the target, or None."""
        stack, seen = [snap.tree], set()
        while stack:
            tree_id = stack.pop()
            if tree_id in self.verified or tree_id in seen:
                continue
            seen.add(tree_id)
            try:
                if not self._there(tree_id, TREE):
                    return f"tree {tree_id.hex()[:16]} is not in the repository"
                nodes = load_tree(self.repo, tree_id)
                for node in nodes:
                    for item in node.content:
                        if isinstance(item, bytes) and not self._there(item, DATA):
                            return f"data blob {item.hex()[:16]} is not in the repository"
                    if node.subtree is not None:
                        stack.append(node.subtree)
            except IntegrityError as e:
                return str(e)
        self.verified |= seen
        return None

    def _there(self, bid: bytes, blob_type: int) -> bool:
        if bid in self.stored or self.repo.has_blob(bid):
            return True
        loc = self.repo.lookup(bid)
        if loc is None or loc.type != blob_type:
            return False
        # Only in a marked pack: store it again while the pack is still there.
        data = self.repo.load_blob(bid, blob_type)
        if self.writer is None:
            self.writer = self.repo.new_pack_writer()
        self.writer.add(blob_type, bid, data)
        self.stored.add(bid)
        if self.writer.size >= self.repo.pack_target_size:
            self.repo.upload_pack(self.writer)
            self.writer = None
        return True

    def finish(self) -> None:
        if self.writer is not None and self.writer.entries:
            self.repo.upload_pack(self.writer)
        self.writer = None
        self.repo.flush_index()


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        raise UsageError(f"cannot read volume {path}: {e.strerror}") from None
