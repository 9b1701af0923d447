"""Content-defined chunking with cut points keyed by a per-repository secret seed.

FastCDC (pyfastcdc, pinned) with its gear table XORed with the repository's secret
63-bit seed, so chunk boundaries depend on a secret and do not reveal content.
Golden vectors in tests/repository/test_chunker.py catch a library upgrade that
would move cut points (and silently break deduplication).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024


class Chunker:
    """Cuts byte streams into chunks; one instance per thread (FastCDC is not thread-safe)."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            seed=seed,
        )

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Chunks of ``stream``; each view is valid only until the next one is taken."""
        for chunk in self._cdc.cut_stream(stream):
            yield memoryview(chunk.data)

    def split(self, data: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(data):
            yield memoryview(chunk.data)
