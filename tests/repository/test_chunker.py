"""Golden cut points: a chunker change that moves them would silently break dedup.

The vectors below were recorded with pyfastcdc 0.3.1 (the pinned version). If this
test fails after a dependency upgrade, the upgrade changes which chunks existing
repositories hold: do not update the vectors, pin the old behaviour.
"""

from __future__ import annotations

import io
import random

import pytest

from strongroom.repository.chunker import Chunker, ChunkerParams

MiB = 1 << 20
DATA = random.Random(1).randbytes(8 * MiB)
SEED = 0x5EED_0F_C0FFEE
SMALL = ChunkerParams(16 * 1024, 64 * 1024, 256 * 1024)

GOLDEN_DEFAULT_SEED_1 = [
    1155996, 504994, 405386, 991525, 1116561, 1141508, 1423897, 1342777, 305964,
]  # fmt: skip
GOLDEN_DEFAULT_SEED = [2787500, 1032208, 786721, 1281021, 820827, 584178, 397968, 698185]
GOLDEN_SMALL_SEED = [
    41701, 89665, 21120, 55854, 36684, 88442, 76238, 21331, 77576, 67285, 17721, 93320,
    69524, 51857, 169754, 75842, 68402, 155404, 146064, 117922, 101795, 101524, 77407,
    192894, 46674, 182376, 28549, 71818, 82684, 74222, 55262, 86420, 53160, 78525, 48903,
    76893, 75613, 72991, 80188, 145375, 100172, 91320, 189356, 70884, 37878, 55119, 72966,
    129067, 82557, 70024, 101566, 84926, 193277, 52338, 94152, 45029, 70291, 46629, 38136,
    93648, 96905, 38910, 22154, 92230, 52635, 23522, 23214, 176774, 37717, 102050, 39777,
    86152, 66731, 34365, 41464, 87098, 66636, 67731, 58697, 28804, 89617, 34303, 133860,
    58275, 100884, 53458, 29139, 117883, 64090, 104346, 84037, 20988, 34050, 119156, 79751,
    68617, 68600, 110997, 21685, 29160, 29647, 72943, 73718, 69275, 75441, 23593, 117244,
    104709, 32590, 95424, 33248,
]  # fmt: skip


def lengths(chunker: Chunker, data: bytes) -> list[int]:
    return [len(c) for c in chunker.split(data)]


@pytest.mark.parametrize(
    ("params", "seed", "golden"),
    [
        (ChunkerParams(), 1, GOLDEN_DEFAULT_SEED_1),
        (ChunkerParams(), SEED, GOLDEN_DEFAULT_SEED),
        (SMALL, SEED, GOLDEN_SMALL_SEED),
    ],
    ids=["default-seed-1", "default", "small"],
)
def test_golden_cut_points(params: ChunkerParams, seed: int, golden: list[int]) -> None:
    assert sum(golden) == len(DATA)
    assert lengths(Chunker(params, seed), DATA) == golden


def test_stream_and_buffer_cut_the_same() -> None:
    chunker = Chunker(ChunkerParams(), SEED)
    streamed = [bytes(c) for group in chunker.split_groups(io.BytesIO(DATA)) for c in group]
    assert [len(c) for c in streamed] == GOLDEN_DEFAULT_SEED
    assert b"".join(streamed) == DATA


def test_small_reads_do_not_move_cut_points() -> None:
    """A stream that returns a few bytes per read (a pipe, a slow disk) cuts the same."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data, self._pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
            n = min(len(buf), 4093, len(self._data) - self._pos)
            buf[:n] = self._data[self._pos : self._pos + n]
            self._pos += n
            return n

    data = DATA[: 2 * MiB]
    chunker = Chunker(SMALL, SEED)
    with Trickle(data) as stream:
        groups = chunker.split_groups(stream)  # type: ignore[arg-type]
        trickled = [len(c) for group in groups for c in group]
    assert trickled == lengths(Chunker(SMALL, SEED), data)


def test_different_seeds_cut_differently() -> None:
    cuts = {
        seed: tuple(lengths(Chunker(SMALL, seed), DATA)) for seed in (1, 2, 3, SEED, (1 << 63) - 1)
    }
    assert len(set(cuts.values())) == len(cuts)

    # and not merely shifted: few cut positions in common
    def positions(ls: tuple[int, ...]) -> set[int]:
        out, pos = set(), 0
        for n in ls[:-1]:
            pos += n
            out.add(pos)
        return out

    a, b = positions(cuts[1]), positions(cuts[2])
    assert len(a & b) < 0.2 * min(len(a), len(b))


def test_same_seed_is_deterministic() -> None:
    assert lengths(Chunker(SMALL, 42), DATA) == lengths(Chunker(SMALL, 42), DATA)


def test_chunk_sizes_respect_the_bounds() -> None:
    for params in (ChunkerParams(), SMALL):
        ls = lengths(Chunker(params, SEED), DATA)
        assert all(params.min_size <= n <= params.max_size for n in ls[:-1])
        assert 0 < ls[-1] <= params.max_size


def test_an_insertion_moves_only_nearby_cut_points() -> None:
    """Content-defined: inserting bytes near the start leaves later chunks unchanged."""
    chunker = Chunker(SMALL, SEED)
    before = [bytes(c) for c in chunker.split(DATA)]
    after = [bytes(c) for c in chunker.split(DATA[:1000] + b"inserted!" + DATA[1000:])]
    common = set(before) & set(after)
    assert len(common) >= len(before) - 3


def test_short_and_empty_input() -> None:
    chunker = Chunker(ChunkerParams(), SEED)
    assert lengths(chunker, b"") == []
    assert lengths(chunker, b"x") == [1]
    assert lengths(chunker, DATA[:1000]) == [1000]


def test_groups_cut_the_same_and_stay_valid_until_the_next_group() -> None:
    """A caller may hold every view of a group (to ask about them at once) until it
    takes the next group."""
    chunker = Chunker(ChunkerParams(), SEED)
    groups = chunker.split_groups(io.BytesIO(DATA))
    held: list[bytes] = []
    sizes: list[int] = []
    for group in groups:
        assert group
        copies = [bytes(c) for c in group]
        # nothing read yet for the next group may change what this one holds
        assert [bytes(c) for c in group] == copies
        held.extend(copies)
        sizes.append(len(group))
    assert [len(c) for c in held] == GOLDEN_DEFAULT_SEED
    assert b"".join(held) == DATA
    assert max(sizes) > 1  # fewer questions than chunks
