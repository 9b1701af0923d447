"""The chunk index: a compact open-addressing table, and index files on storage.

Every table test runs twice: with the C table (``_chunktable``, built by the install)
and with ``PyTable``, its Python twin; the two must make byte-identical tables."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import msgspec
import pytest

from strongroom.errors import IntegrityError
from strongroom.repository import index as index_module
from strongroom.repository.index import (
    RECORD,
    ChunkIndex,
    HashTable,
    IndexFile,
    IndexPack,
    PyTable,
    decode_index,
    encode_index,
)
from strongroom.repository.pack import DATA, TREE, PackEntry

N = 100_000
BYTES_PER_ENTRY = 50


def make_ids(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def pack_ids(n: int) -> list[str]:
    rng = random.Random(99)
    return [rng.randbytes(32).hex() for _ in range(n)]


def entry(bid: bytes, i: int) -> PackEntry:
    return PackEntry(
        type=TREE if i % 7 == 0 else DATA,
        id=bid,
        offset=36 + i * 3,
        length=1000 + i % 5000,
        raw_length=(i * 31) % (4 << 20),
        flags=i % 2,
    )


TABLES: list[Callable[[int], HashTable]] = [PyTable]
if index_module.NATIVE:
    TABLES.append(index_module.Table)


@pytest.fixture(
    scope="module", autouse=True, params=TABLES, ids=lambda t: getattr(t, "__module__", "?")
)
def table(request: pytest.FixtureRequest) -> Iterator[Callable[[int], HashTable]]:
    """ChunkIndex() in these tests uses this table."""
    saved = index_module.Table
    index_module.Table = request.param
    try:
        yield request.param
    finally:
        index_module.Table = saved


@pytest.fixture(scope="module")
def ids() -> list[bytes]:
    return make_ids(N)


@pytest.fixture(scope="module")
def filled(ids: list[bytes], table: Callable[[int], HashTable]) -> ChunkIndex:
    """100k entries added to a default-sized index: it grows many times."""
    packs = pack_ids(300)
    index = ChunkIndex()
    for i, bid in enumerate(ids):
        index.add(packs[i % len(packs)], entry(bid, i))
    return index


def test_every_entry_is_found_after_growth(filled: ChunkIndex, ids: list[bytes]) -> None:
    packs = pack_ids(300)
    assert len(filled) == N
    for i, bid in enumerate(ids):
        loc = filled.get(bid)
        assert loc is not None, i
        e = entry(bid, i)
        assert (loc.pack_id, loc.type, loc.offset, loc.length, loc.raw_length, loc.flags) == (
            packs[i % len(packs)],
            e.type,
            e.offset,
            e.length,
            e.raw_length,
            e.flags,
        )
        assert loc.entry(bid) == e
        assert bid in filled


def test_absent_ids_are_not_found(filled: ChunkIndex) -> None:
    for bid in make_ids(2000, seed=8):
        assert filled.get(bid) is None
        assert bid not in filled


def test_memory_per_entry_when_sized_for_its_contents(ids: list[bytes]) -> None:
    """Sized up front, as load_index does from the index files' total size."""
    packs = pack_ids(300)
    index = ChunkIndex(N)
    for i, bid in enumerate(ids):
        index.add(packs[i % len(packs)], entry(bid, i))
    assert len(index) == N
    assert index.memory_bytes / len(index) < BYTES_PER_ENTRY


def test_memory_per_entry_stays_under_the_budget_while_growing(ids: list[bytes]) -> None:
    """A backup adds to the index as it goes: every size along the way keeps the budget.

    Measured from 10k entries on (below that the per-pack overhead dominates).
    """
    packs = pack_ids(300)
    index = ChunkIndex()
    worst = 0.0
    for i, bid in enumerate(ids):
        index.add(packs[i % len(packs)], entry(bid, i))
        if i + 1 >= 10_000 and (i + 1) % 1000 == 0:
            worst = max(worst, index.memory_bytes / len(index))
    assert index.memory_bytes / len(index) < BYTES_PER_ENTRY
    assert worst < BYTES_PER_ENTRY


def test_add_keeps_the_first_copy_unless_replace() -> None:
    index = ChunkIndex()
    bid = bytes(range(1, 33))
    index.add("a" * 64, PackEntry(DATA, bid, 100, 10, 5, 0))
    index.add("b" * 64, PackEntry(DATA, bid, 200, 20, 5, 0))
    loc = index.get(bid)
    assert loc is not None and loc.pack_id == "a" * 64 and loc.offset == 100
    index.add("c" * 64, PackEntry(DATA, bid, 300, 30, 5, 1), replace=True)
    loc = index.get(bid)
    assert loc is not None and (loc.pack_id, loc.offset, loc.length, loc.flags) == (
        "c" * 64,
        300,
        30,
        1,
    )
    assert len(index) == 1


def test_replace_many_during_growth(ids: list[bytes]) -> None:
    index = ChunkIndex(16)
    subset = ids[:5000]
    for i, bid in enumerate(subset):
        index.add("a" * 64, entry(bid, i))
    for i, bid in enumerate(subset):
        index.add("b" * 64, entry(bid, i + 1), replace=True)
    assert len(index) == len(subset)
    for i, bid in enumerate(subset):
        loc = index.get(bid)
        assert (
            loc is not None and loc.pack_id == "b" * 64 and loc.offset == entry(bid, i + 1).offset
        )


def test_ids_sharing_a_probe_start_do_not_collide() -> None:
    """Ids whose first 8 bytes are equal land in the same slot first: linear probing."""
    index = ChunkIndex(16)
    ids = [b"\x01" * 8 + bytes([i]) * 24 for i in range(1, 12)]
    for i, bid in enumerate(ids):
        index.add("p" * 64, PackEntry(DATA, bid, i, 1, 1, 0))
    for i, bid in enumerate(ids):
        loc = index.get(bid)
        assert loc is not None and loc.offset == i


def test_out_of_range_entries_are_refused() -> None:
    index = ChunkIndex()
    bid = bytes(range(1, 33))
    for bad in (
        PackEntry(DATA, bid, 0, 1, 1 << 24, 0),
        PackEntry(16, bid, 0, 1, 1, 0),
        PackEntry(DATA, bid, 0, 1, 1, 16),
    ):
        with pytest.raises(IntegrityError):
            index.add("p" * 64, bad)
    assert len(index) == 0 and index.get(bid) is None


def test_by_pack_groups_every_entry(filled: ChunkIndex, ids: list[bytes]) -> None:
    groups = filled.by_pack()
    assert sum(len(v) for v in groups.values()) == N
    assert set(groups) == set(pack_ids(300))
    prefixes = {key for v in groups.values() for key, _ in v}
    assert prefixes == {bid[:16] for bid in ids}


def test_keys_in_gives_each_packs_keys_as_records(filled: ChunkIndex) -> None:
    groups = filled.by_pack()
    wanted = [*sorted(groups)[::3], "f" * 64]  # and a pack the index does not know
    views = filled.keys_in(wanted)
    assert set(views) == {p for p in wanted if groups.get(p)}
    for pack_id, view in views.items():
        number = filled.packs.index(pack_id)
        records = list(RECORD.iter_unpack(view))
        assert {n for n, _ in records} == {number}
        assert sorted(key for _, key in records) == sorted(key for key, _ in groups[pack_id])
    assert filled.keys_in([]) == {}


# --- index files ------------------------------------------------------------------------


def test_index_file_round_trip(ids: list[bytes]) -> None:
    packs = pack_ids(20)
    doc = {
        p: [entry(bid, i) for i, bid in enumerate(ids[k * 50 : k * 50 + 50])]
        for k, p in enumerate(packs)
    }
    decoded = list(decode_index(encode_index(doc), "index test"))
    assert decoded == [(p, e) for p, entries in doc.items() for e in entries]


def test_empty_index_file_round_trip() -> None:
    assert list(decode_index(encode_index({}), "index test")) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe garbage",
        msgspec.msgpack.encode({"version": 2, "packs": []}),
        msgspec.msgpack.encode(IndexFile(1, [IndexPack("short", [])])),
        msgspec.msgpack.encode(IndexFile(1, [IndexPack("a" * 64, [(0, b"short", 0, 1, 1, 0)])])),
        msgspec.msgpack.encode({"version": 1, "packs": [["a" * 64, [[0, "str", 0, 1, 1, 0]]]]}),
    ],
    ids=["empty", "garbage", "version", "pack-id", "blob-id", "blob-id-type"],
)
def test_malformed_index_files_raise_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError) as info:
        list(decode_index(raw, "index abcd"))
    assert "index abcd" in str(info.value)


def test_the_c_table_is_built_where_the_suite_runs_in_ci() -> None:
    """scripts/setup.sh installs with the C table; CI must test it, not skip it."""
    if os.environ.get("CI") == "true":
        assert index_module.NATIVE, "strongroom.repository._chunktable was not built"
    elif not index_module.NATIVE:
        pytest.skip("the C table is not built here (STRONGROOM_PURE_PYTHON=1?)")


@pytest.mark.skipif(not index_module.NATIVE, reason="the C table is not built")
def test_c_and_python_tables_agree_byte_for_byte() -> None:
    """The same calls, growth included, give the same slots and the same answers."""
    rng = random.Random(5)
    tables = [PyTable(16), index_module.Table(16)]
    known: list[bytes] = []
    for step in range(3000):
        if step % 10 == 0:
            blobs = [
                (rng.randrange(16), rng.randbytes(32), rng.randrange(1 << 32),
                 rng.randrange(1 << 32), rng.randrange(1 << 24), rng.randrange(16))
                for _ in range(rng.randrange(0, 200))
            ]  # fmt: skip
            if known and blobs:
                blobs[0] = (1, known[rng.randrange(len(known))], 1, 2, 3, 4)  # already there
            added = {t.put_many(step, blobs) for t in tables}
            assert len(added) == 1
            known.extend(b[1] for b in blobs)
        else:
            bid = known[rng.randrange(len(known))] if known and step % 3 == 0 else rng.randbytes(32)
            fields = [rng.randrange(1 << 32) for _ in range(4)]
            replace = step % 2 == 0
            assert len({t.put(bid, *fields, replace) for t in tables}) == 1
            known.append(bid)
    assert tables[0].raw() == tables[1].raw()
    assert len(tables[0]) == len(tables[1]) and tables[0].nslots == tables[1].nslots
    assert tables[0].items() == tables[1].items()
    for bid in known[::7] + [rng.randbytes(32) for _ in range(500)]:
        assert tables[0].get(bid) == tables[1].get(bid)
        assert tables[0].find(bid) == tables[1].find(bid)
        assert (bid in tables[0]) == (bid in tables[1])


@pytest.mark.skipif(not index_module.NATIVE, reason="the C table is not built")
def test_c_and_python_marks_agree_through_growth() -> None:
    """Marks (a collector's referenced bits) stay with their entry when the table grows,
    and usage/select give the same answers in C and in Python."""
    rng = random.Random(9)
    tables = [PyTable(16), index_module.Table(16)]
    ids: list[bytes] = []
    t_pack: dict[bytes, int] = {}  # each id's pack number
    marked: dict[bytes, int] = {}
    for _ in range(40):
        batch = [rng.randbytes(32) for _ in range(rng.randrange(1, 120))]
        t_pack.update((bid, rng.randrange(9)) for bid in batch)
        for t in tables:
            for bid in batch:
                t.put(bid, t_pack[bid], 0, 33, 0, False)
        ids += batch
        for bid in rng.sample(ids, min(len(ids), 20)):
            bits = rng.choice([1, 2, 4, 1 | 2])
            before = {t.mark(bid, bits) for t in tables}
            assert before == {marked.get(bid, 0)}
            marked[bid] = marked.get(bid, 0) | bits
        absent = rng.randbytes(32)
        assert {t.mark(absent, 1) for t in tables} == {-1}
    assert tables[0].raw() == tables[1].raw() and tables[0].nbytes == tables[1].nbytes
    for bid in ids:
        assert {t.mark(bid, 0) for t in tables} == {marked.get(bid, 0)}
    present = bytes(rng.randrange(2) for _ in range(7))  # packs 7 and 8: not even listed
    for required, excluded in [(1, 0), (1, 4), (2, 0), (0, 0), (3, 4)]:
        usage = [t.usage(present, required, excluded, 3) for t in tables]
        assert usage[0] == usage[1]
        picked = [t.select(present, required, excluded) for t in tables]
        assert picked[0] == picked[1]
        expected = sorted(
            (t_pack[bid], bid[:16])
            for bid in set(ids)
            if marked.get(bid, 0) & required == required
            and not marked.get(bid, 0) & excluded
            and t_pack[bid] < len(present)
            and present[t_pack[bid]]
        )
        records = picked[0]
        assert [
            (int.from_bytes(records[i : i + 4], "little"), records[i + 4 : i + 20])
            for i in range(0, len(records), 20)
        ] == expected
        used, lost, sample = usage[0]
        assert sum(used) + sum(33 for _ in range(lost)) == 33 * sum(
            1 for bid in set(ids) if marked.get(bid, 0) & required == required
            and not marked.get(bid, 0) & excluded
        )  # fmt: skip
        assert len(sample) == min(lost, 3)


@pytest.mark.parametrize(
    "blobs",
    [
        [(0, b"short", 0, 1, 1, 0)],
        [(0, b"x" * 32, -1, 1, 1, 0)],
        [(0, b"x" * 32, 0, 1 << 32, 1, 0)],
        [(0, b"x" * 32, 0, 1, 1 << 24, 0)],
        [(16, b"x" * 32, 0, 1, 1, 0)],
        [(0, b"x" * 32, 0, 1, 1, 16)],
        [(0, b"x" * 32, "0", 1, 1, 0)],
        [(0, b"x" * 32, 0, 1, 1)],
        [[0, b"x" * 32, 0, 1, 1, 0]],
    ],
    ids=["short-id", "negative", "length", "raw", "type", "flags", "str", "five", "list"],
)
def test_a_malformed_pack_listing_adds_nothing(blobs: list[tuple[object, ...]]) -> None:
    """Every entry is checked before any is added, in both tables."""
    index = ChunkIndex()
    good = (0, bytes(range(1, 33)), 0, 1, 1, 0)
    with pytest.raises(IntegrityError):
        index.add_blobs("p" * 64, [good, *blobs])  # type: ignore[list-item]
    assert len(index) == 0 and bytes(range(1, 33)) not in index


def test_lookups_refuse_ids_shorter_than_a_key() -> None:
    index = ChunkIndex()
    with pytest.raises(ValueError):
        index.get(b"short")
    with pytest.raises(ValueError):
        _ = b"" in index
