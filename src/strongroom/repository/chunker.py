"""Content-defined chunking with cut points keyed by a per-repository secret seed.

FastCDC (pyfastcdc, pinned) with its gear table XORed with the repository's secret
63-bit seed, so chunk boundaries depend on a secret and do not reveal content.
Golden vectors in tests/repository/test_chunker.py catch a library upgrade that
would move cut points (and silently break deduplication).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pyfastcdc import FastCDC


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024


class Chunker:
    """Cuts byte streams into chunks; one instance per thread (FastCDC is not thread-safe).

    Streams are read into one buffer of twice the largest chunk, kept for the
    chunker's life: a fresh buffer per file would be zeroed and faulted in each time.
    """

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            seed=seed,
        )
        self._buf: bytearray | None = None

    def split_groups(self, stream: Readable) -> Iterator[list[memoryview]]:
        """Chunks of ``stream`` in groups (those cut from one fill of the buffer, a few
        MiB); each group's views are valid until the next group is taken, so a caller
        can ask about all of them at once."""
        max_size = self.params.max_size
        if self._buf is None:
            self._buf = bytearray(2 * max_size)
        buf = self._buf
        view = memoryview(buf)
        filled = 0
        eof = False
        while True:
            while not eof and filled < len(buf):
                n = stream.readinto(view[filled:])
                if not n:
                    eof = True
                else:
                    filled += n
            pos = 0
            group: list[memoryview] = []
            # A cut is final once the chunker saw max_size bytes past its start (or
            # the end): the same cut points as one pass over the whole stream.
            for chunk in self._cdc.cut_buf(view[:filled]):
                if not eof and filled - pos < max_size:
                    break
                group.append(view[pos : pos + chunk.length])
                pos += chunk.length
            if group:
                yield group
            if eof:
                return
            # The buffer was full, so less than max_size is left after pos > max_size:
            # the two ranges never overlap. Assigned through the view: a bytearray
            # given a view first copies it to a new bytearray.
            view[: filled - pos] = view[pos:filled]
            filled -= pos

    def split(self, data: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(data):
            yield memoryview(chunk.data)
