"""The chunk index: which pack holds each blob, in about 40 bytes per chunk.

In memory, ``ChunkIndex`` is an open-addressing hash table (linear probing) in one
array (C, ``_chunktable``; or a ``bytearray`` in ``PyTable``): 32-byte slots holding
the first 16 bytes of the blob id, the pack's number, offset, length, and raw length
with type and flags in its top byte. Ids are keyed hashes, so their bytes are uniform
and serve as the hash directly. A 128-bit prefix makes a false match between two
different chunks about as likely as 1 in 10^20 at 10^9 chunks; ``load_blob`` still
verifies the full id of everything it reads.

On storage, index files are sealed msgpack documents listing packs and their entries.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import msgspec

from strongroom.errors import IntegrityError
from strongroom.repository.codec import decode
from strongroom.repository.pack import PackEntry

if TYPE_CHECKING:
    from strongroom.repository._chunktable import Table as CTable

SLOT = struct.Struct("<16sIIII")
RECORD = struct.Struct("<I16s")  # Table.select's: a pack number and a key
_PACK_NO = struct.Struct("<I")
_KEY = struct.Struct("<16s16x")  # a slot's key, the rest skipped
EMPTY = bytes(16)
MAX_LOAD = 0.85
# Growing by 1.25x at 85% full keeps the table at least 68% full: under 48 bytes a chunk.
GROWTH = 1.25
RAW_MASK = (1 << 24) - 1


@dataclass(frozen=True)
class BlobLocation:
    pack_id: str
    type: int
    offset: int
    length: int
    raw_length: int
    flags: int

    def entry(self, bid: bytes) -> PackEntry:
        return PackEntry(self.type, bid, self.offset, self.length, self.raw_length, self.flags)


class PyTable:
    """The hash table in Python: the fallback where the C version (``_chunktable``,
    the same table in the same bytes) was not built, and the reference the tests
    compare it with. Slots as described above; one writer, many readers."""

    def __init__(self, nslots: int) -> None:
        if nslots < 1:
            raise ValueError("slot count out of range")
        self.nslots = nslots
        self._buf = bytearray(nslots * SLOT.size)
        self._count = 0
        self._marks: bytearray | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return len(self._buf) + (0 if self._marks is None else len(self._marks))

    def _probe(self, key: bytes) -> tuple[int, bool]:
        buf, n, size = self._buf, self.nslots, SLOT.size
        slot = int.from_bytes(key[:8], "little") % n
        while True:
            pos = slot * size
            stored = buf[pos : pos + 16]
            if stored == key:
                return slot, True
            if stored == EMPTY:
                return slot, False
            slot += 1
            if slot == n:
                slot = 0

    def __contains__(self, bid: bytes) -> bool:
        return self._probe(_key(bid))[1]

    def find(self, bid: bytes) -> int:
        slot, found = self._probe(_key(bid))
        if not found:
            return -1
        pack_no: int = _PACK_NO.unpack_from(self._buf, slot * SLOT.size + 16)[0]
        return pack_no

    def get(self, bid: bytes) -> tuple[int, int, int, int] | None:
        slot, found = self._probe(_key(bid))
        if not found:
            return None
        _, pack_no, offset, length, meta = SLOT.unpack_from(self._buf, slot * SLOT.size)
        return pack_no, offset, length, meta

    def _reserve(self, more: int) -> None:
        n = self.nslots
        while (self._count + more) > n * MAX_LOAD:
            n = int(n * GROWTH) + 1
        if n != self.nslots:
            self._resize(n)

    def put(
        self, bid: bytes, pack_no: int, offset: int, length: int, meta: int, replace: bool, /
    ) -> bool:
        key = _key(bid)
        for value in (pack_no, offset, length, meta):
            if not 0 <= value < 1 << 32:
                raise OverflowError("index field out of range")
        if key == EMPTY:
            return False  # 2^-128: never; an all-zero key would read as an empty slot
        self._reserve(1)
        slot, found = self._probe(key)
        if found and not replace:
            return False  # first copy wins; duplicates (after a crash) are harmless
        SLOT.pack_into(self._buf, slot * SLOT.size, key, pack_no, offset, length, meta)
        if found:
            return False
        self._count += 1
        return True

    def put_many(self, pack_no: int, blobs: list[RawBlob], /) -> int:
        for blob in blobs:
            if type(blob) is not tuple or len(blob) != 6:
                raise TypeError("a blob is a 6-tuple")
            btype, bid, offset, length, raw_length, flags = blob
            _key(bid)
            if not (
                0 <= btype < 16
                and 0 <= offset < 1 << 32
                and 0 <= length < 1 << 32
                and 0 <= raw_length <= RAW_MASK
                and 0 <= flags < 16
            ):
                raise OverflowError("index field out of range")
        self._reserve(len(blobs))
        buf, n, size, pack_into = self._buf, self.nslots, SLOT.size, SLOT.pack_into
        added = 0
        for btype, bid, offset, length, raw_length, flags in blobs:
            key = bid[:16]
            if key == EMPTY:
                continue
            slot = int.from_bytes(key[:8], "little") % n
            while True:
                pos = slot * size
                stored = buf[pos : pos + 16]
                if stored == key:
                    break
                if stored == EMPTY:
                    pack_into(
                        buf, pos, key, pack_no, offset, length,
                        pack_meta(btype, raw_length, flags),
                    )  # fmt: skip
                    added += 1
                    break
                slot += 1
                if slot == n:
                    slot = 0
        self._count += added
        return added

    def _resize(self, n: int) -> None:
        old, old_marks = self._buf, self._marks
        self.nslots = n
        self._buf = buf = bytearray(n * SLOT.size)
        self._marks = marks = None if old_marks is None else bytearray(n)
        size = SLOT.size
        # Keys come out of iter_unpack at C speed; only the filled slots are re-probed.
        for i, (key,) in enumerate(_KEY.iter_unpack(old)):
            if key == EMPTY:
                continue
            slot = int.from_bytes(key[:8], "little") % n
            while buf[slot * size : slot * size + 16] != EMPTY:
                slot += 1
                if slot == n:
                    slot = 0
            buf[slot * size : (slot + 1) * size] = old[i * size : (i + 1) * size]
            if marks is not None and old_marks is not None:
                marks[slot] = old_marks[i]

    def mark(self, bid: bytes, bits: int, /) -> int:
        if not 0 <= bits < 256:
            raise OverflowError("bits out of range")
        slot, found = self._probe(_key(bid))
        if not found:
            return -1
        if self._marks is None:
            if not bits:
                return 0
            self._marks = bytearray(self.nslots)
        before = self._marks[slot]
        self._marks[slot] = before | bits
        return before

    def _selected(self, required: int, excluded: int) -> Iterator[tuple[bytes, int, int]]:
        """(key, pack number, length) of each entry whose marks hold all of
        ``required`` and none of ``excluded``, in slot order."""
        for value in (required, excluded):
            if not 0 <= value < 256:
                raise OverflowError("bits out of range")
        marks = self._marks
        for i, (key, pack_no, _, length, _) in enumerate(SLOT.iter_unpack(self._buf)):
            m = 0 if marks is None else marks[i]
            if key != EMPTY and m & required == required and not m & excluded:
                yield key, pack_no, length

    def usage(
        self, present: bytes | bytearray, required: int, excluded: int, sample: int, /
    ) -> tuple[list[int], int, list[bytes]]:
        used = [0] * len(present)
        lost = 0
        lost_keys: list[bytes] = []
        for key, pack_no, length in self._selected(required, excluded):
            if pack_no < len(present) and present[pack_no]:
                used[pack_no] += length
                continue
            if lost < sample:
                lost_keys.append(key)
            lost += 1
        return used, lost, lost_keys

    def select(self, packs: bytes | bytearray, required: int, excluded: int, /) -> bytes:
        records = sorted(
            (pack_no, key)
            for key, pack_no, _ in self._selected(required, excluded)
            if pack_no < len(packs) and packs[pack_no]
        )
        return b"".join(_PACK_NO.pack(pack_no) + key for pack_no, key in records)

    def items(self) -> list[tuple[bytes, int, int, int, int]]:
        return [entry for entry in SLOT.iter_unpack(self._buf) if entry[0] != EMPTY]

    def raw(self) -> bytes:
        return bytes(self._buf)


def _key(bid: bytes) -> bytes:
    key = bytes(bid[:16])
    if len(key) < 16:
        raise ValueError("blob id shorter than 16 bytes")
    return key


# A table: PyTable, or the C one (typed by _chunktable.pyi, which mirrors PyTable).
HashTable = Union[PyTable, "CTable"]
Table: Callable[[int], HashTable]
try:
    from strongroom.repository._chunktable import Table
except ImportError:  # not built (a source checkout run without installing)
    NATIVE = False
    Table = PyTable
else:
    NATIVE = True


def pack_meta(blob_type: int, raw_length: int, flags: int) -> int:
    """A slot's last field: the raw length, with the type and flags in its top byte."""
    return raw_length | (blob_type << 24) | (flags << 28)


def _location(pack_id: str, offset: int, length: int, meta: int) -> BlobLocation:
    return BlobLocation(pack_id, (meta >> 24) & 15, offset, length, meta & RAW_MASK, meta >> 28)


class ChunkIndex:
    """Blob id -> location, compact and O(1); safe for one writer and many readers.

    The table is ``_chunktable.Table`` (C) when it was built, else ``PyTable``; the two
    agree byte for byte (tests/repository/test_index.py). The C one makes loading an
    index, adding a new blob and looking one up cost a method call instead of a loop
    of interpreted probes (docs/performance.md)."""

    def __init__(
        self, expected: int = 1024, *, table: Callable[[int], HashTable] | None = None
    ) -> None:
        self._table = (table or Table)(max(16, int(expected / MAX_LOAD) + 1))
        self.packs: list[str] = []
        self._pack_numbers: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._table)

    @property
    def memory_bytes(self) -> int:
        return self._table.nbytes + sum(49 + 8 for _ in self.packs)

    @property
    def table(self) -> HashTable:
        """The hash table itself (a collector marks blobs in it)."""
        return self._table

    def number_of(self, pack_id: str) -> int | None:
        """The pack's number, if the index knows the pack."""
        return self._pack_numbers.get(pack_id)

    def pack_flags(self, pack_ids: Iterable[str]) -> bytearray:
        """A byte per pack number, 1 for each of ``pack_ids`` the index knows (what the
        table's ``usage`` and ``select`` take)."""
        flags = bytearray(len(self.packs))
        for pack_id in pack_ids:
            number = self._pack_numbers.get(pack_id)
            if number is not None:
                flags[number] = 1
        return flags

    def pack_number(self, pack_id: str) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self.packs)
            self.packs.append(pack_id)
            self._pack_numbers[pack_id] = number
        return number

    def add(self, pack_id: str, entry: PackEntry, *, replace: bool = False) -> None:
        """Record where a blob is; an existing entry is kept unless ``replace``."""
        if entry.raw_length > RAW_MASK or entry.type > 15 or entry.flags > 15:
            raise IntegrityError("index entry out of range")
        if not replace and entry.id in self._table:
            return  # first copy wins; duplicates (after a crash) are harmless
        packed_meta = pack_meta(entry.type, entry.raw_length, entry.flags)
        try:
            self._table.put(
                entry.id, self.pack_number(pack_id), entry.offset, entry.length, packed_meta,
                replace,
            )  # fmt: skip
        except (OverflowError, ValueError, TypeError) as e:
            raise IntegrityError(f"index entry out of range ({e})") from None

    def add_blobs(self, pack_id: str, blobs: list[RawBlob]) -> None:
        """``add`` for a pack's validated index tuples at once (loading an index):
        an existing entry is kept."""
        try:
            self._table.put_many(self.pack_number(pack_id), blobs)
        except (OverflowError, ValueError, TypeError) as e:
            raise IntegrityError(f"index entry out of range ({e})") from None

    def get(self, bid: bytes) -> BlobLocation | None:
        found = self._table.get(bid)
        if found is None:
            return None
        pack_no, offset, length, meta = found
        return _location(self.packs[pack_no], offset, length, meta)

    def pack_of(self, bid: bytes) -> str | None:
        """The id of the pack holding the blob (``get`` without building a location)."""
        pack_no = self._table.find(bid)
        return None if pack_no < 0 else self.packs[pack_no]

    def __contains__(self, bid: bytes) -> bool:
        return bid in self._table

    def keys_in(
        self, pack_ids: Iterable[str], required: int = 0, excluded: int = 0
    ) -> dict[str, memoryview]:
        """The 16-byte keys of the blobs each of these packs holds (those whose marks
        hold all of ``required`` and none of ``excluded``), as 20-byte records (the
        pack's number, then the key: ``RECORD``), one view per pack that has any, of one
        buffer (``Table.select``: 20 bytes a blob, not an object per blob)."""
        records = memoryview(self._table.select(self.pack_flags(pack_ids), required, excluded))
        count = len(records) // RECORD.size

        def pack_at(i: int) -> int:
            return int.from_bytes(records[i * RECORD.size : i * RECORD.size + 4], "little")

        views: dict[str, memoryview] = {}
        start = 0
        while start < count:
            number = pack_at(start)
            end = bisect.bisect_right(range(count), number, lo=start, key=pack_at)
            views[self.packs[number]] = records[start * RECORD.size : end * RECORD.size]
            start = end
        return views

    def by_pack(self) -> dict[str, list[tuple[bytes, BlobLocation]]]:
        """Every entry grouped by pack, keyed by the stored 16-byte id prefix."""
        groups: dict[str, list[tuple[bytes, BlobLocation]]] = {p: [] for p in self.packs}
        for key, pack_no, offset, length, meta in self._table.items():
            pack_id = self.packs[pack_no]
            groups[pack_id].append((key, _location(pack_id, offset, length, meta)))
        return groups


class IndexPack(msgspec.Struct, array_like=True):
    id: str
    blobs: list[tuple[int, bytes, int, int, int, int]]


class IndexFile(msgspec.Struct):
    version: int
    packs: list[IndexPack]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(IndexFile)


def encode_index(packs: dict[str, list[PackEntry]]) -> bytes:
    doc = IndexFile(
        version=1,
        packs=[
            IndexPack(
                pid, [(e.type, e.id, e.offset, e.length, e.raw_length, e.flags) for e in entries]
            )
            for pid, entries in packs.items()
        ],
    )
    return _encoder.encode(doc)


RawBlob = tuple[int, bytes, int, int, int, int]  # type, id, offset, length, raw, flags


def decode_index_packs(data: bytes, what: str) -> list[tuple[str, list[RawBlob]]]:
    """Each pack an index file describes, with its blobs as validated tuples."""
    doc = decode(_decoder, data, what, "index")
    if doc.version != 1:
        raise IntegrityError(f"{what}: unknown index version {doc.version}")
    for pack in doc.packs:
        if len(pack.id) != 64:
            raise IntegrityError(f"{what}: malformed pack id")
        for btype, bid, offset, length, raw_length, flags in pack.blobs:
            if (
                len(bid) != 32
                or btype not in (0, 1)
                or not 0 <= offset < 1 << 32
                or not 0 < length < 1 << 32
                or not 0 <= raw_length <= RAW_MASK
                or not 0 <= flags < 16
            ):
                raise IntegrityError(f"{what}: malformed or out-of-range blob entry")
    return [(pack.id, pack.blobs) for pack in doc.packs]


def decode_index(data: bytes, what: str) -> Iterator[tuple[str, PackEntry]]:
    for pack_id, blobs in decode_index_packs(data, what):
        for blob in blobs:
            yield pack_id, PackEntry(*blob)
