"""zstd compression, skipped for data that does not compress.

python-zstandard, with contexts and output buffers kept per thread: reusing a
decompression context halves the cost of small blobs compared with a new one per
frame, a reused output buffer saves the page faults of a fresh one (big buffers are
mapped on their own, see cli.main), and the calls release the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import blake3
import zstandard

from strongroom.errors import IntegrityError

DEFAULT_LEVEL = 3
# Store raw when zstd saves less than this fraction: decompression is not free.
MIN_SAVING = 0.02

_local = threading.local()
PIECE = 256 * 1024
# Restored blobs up to this size are decompressed into one buffer per thread (a chunk
# is at most 4 MiB).
CHECK_BUFFER = 4 * 1024 * 1024


# Frames up to this size get their own context. zstd sizes a context's tables to its
# input and frees and re-allocates them once they have been 3x too big for 128 frames:
# one context for small files and big chunks alike did that over and over (fresh
# memory each time: a quarter of a backup's page faults).
SMALL_FRAME = 128 * 1024

# Level 3 with smaller match-finder tables for frames above SMALL_FRAME: hash log 16 and
# chain log 14 instead of 17 and 16. On the benchmark's data (a third of it, chunked as
# a backup does, three alternations on a 2-core Xeon) zstd took 3.08-3.26 s instead of
# 3.47-3.67 s (~10% less) for 1.0% more bytes; level 2 was 20% faster for 3.2% more.
# Small frames keep level 3's own parameters (zstd already shrinks them to the input).
# The tables only change how hard the compressor searches: any zstd reads the frames.
TUNED_LEVEL = 3
TUNED_TABLES = {"hash_log": 16, "chain_log": 14}


def _compressor(level: int, small: bool) -> zstandard.ZstdCompressor:
    if level == TUNED_LEVEL and not small:
        params = zstandard.ZstdCompressionParameters.from_level(level, **TUNED_TABLES)
        return zstandard.ZstdCompressor(compression_params=params)
    return zstandard.ZstdCompressor(level=level)


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes | None:
    """zstd frame of ``data``, or None when compression would not pay."""
    compressors: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(
        _local, "compressors", None
    )
    if compressors is None:
        compressors = _local.compressors = {}
    which = (level, len(data) <= SMALL_FRAME)
    compressor = compressors.get(which)
    if compressor is None:
        compressor = compressors[which] = _compressor(*which)
    out = compressor.compress(data)
    if len(out) > len(data) * (1 - MIN_SAVING):
        return None
    return out


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompression context."""
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def thread_buffer(name: str, size: int) -> memoryview:
    """This thread's buffer called ``name``, of at least ``size`` bytes (made bigger
    when a caller needs more). Its contents are valid until the thread's next use of
    the same name."""
    buffer: memoryview | None = getattr(_local, name, None)
    if buffer is None or len(buffer) < size:
        buffer = memoryview(bytearray(size))
        setattr(_local, name, buffer)
    return buffer


def decompress_transient(data: bytes | memoryview, expected_size: int, what: str) -> memoryview:
    """``decompress`` into a buffer this thread reuses: the view is valid until the
    thread's next call. A fresh output buffer per frame costs page faults and zeroing
    (twice the decompression itself for 1 MiB frames). For frames up to CHECK_BUFFER
    bytes; up to PIECE bytes, a new small buffer (``decompress``)."""
    if expected_size > CHECK_BUFFER:
        raise ValueError("frame too big for the reused buffer")
    if expected_size <= PIECE:
        # One call: a stream reader's set-up costs more than a small frame's
        # decompression (15% of it), and a small buffer comes from the heap.
        return memoryview(decompress(data, expected_size, what))
    buffer = thread_buffer("check_buffer", CHECK_BUFFER + 1)
    decompressor = _decompressor()
    # One byte of room past the expected size, so that a frame with more is seen.
    room = buffer[: expected_size + 1]
    total = 0
    try:
        with decompressor.stream_reader(data, read_size=len(data)) as reader:
            while total < len(room):
                n = reader.readinto(room[total:])
                if not n:
                    break
                total += n
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what}: cannot decompress ({e})") from None
    if total != expected_size:
        raise IntegrityError(
            f"{what}: decompressed to {total} bytes or more, expected {expected_size}"
        )
    return room[:total]


def _pieces(data: bytes, expected_size: int, what: str) -> Iterator[memoryview]:
    """What ``data`` decompresses to, which must be exactly ``expected_size`` bytes, in
    views of a buffer of PIECE bytes that each thread reuses (each valid until the
    next; as fast as one buffer for the whole frame). IntegrityError on any damage."""
    buffer = thread_buffer("piece_buffer", PIECE)
    decompressor = _decompressor()
    total = 0
    try:
        with decompressor.stream_reader(data, read_size=len(data)) as reader:
            while total <= expected_size:
                n = reader.readinto(buffer)
                if not n:
                    break
                total += n
                if total <= expected_size:
                    yield buffer[:n]
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what}: cannot decompress ({e})") from None
    if total != expected_size:
        raise IntegrityError(
            f"{what}: decompressed to {total} bytes or more, expected {expected_size}"
        )


def decompressed_id(data: bytes, expected_size: int, id_key: bytes, what: str) -> bytes:
    """The keyed id (BLAKE3) of what ``data`` decompresses to, which must be exactly
    ``expected_size`` bytes, without keeping that content."""
    if expected_size <= PIECE:  # one call (see decompress_transient)
        return blake3.blake3(decompress(data, expected_size, what), key=id_key).digest()
    hasher = blake3.blake3(key=id_key, max_threads=1)
    for piece in _pieces(data, expected_size, what):
        hasher.update(piece)
    return hasher.digest()


def decompresses_to(frame: bytes, content: bytes | memoryview) -> bool:
    """Whether ``frame`` decompresses to exactly ``content`` (a new frame's round trip).

    A small blob (bytes, at most PIECE) is decompressed in one call and compared as
    bytes: a stream reader's set-up cost more than its decompression (a fifth of the
    check of small files). Anything else is compared piece by piece against the
    reused buffer, at memcmp speed and without copying: ``bytearray.startswith``
    takes any buffer, where a memoryview compares item by item."""
    if isinstance(content, bytes) and len(content) <= PIECE:
        try:
            return decompress(frame, len(content), "new blob") == content
        except IntegrityError:
            return False
    view = memoryview(content)
    backing = thread_buffer("piece_buffer", PIECE).obj
    assert isinstance(backing, bytearray)
    at = 0
    try:
        for piece in _pieces(frame, len(view), "new blob"):
            if not backing.startswith(view[at : at + len(piece)]):
                return False
            at += len(piece)
    except IntegrityError:
        return False
    return True


def decompress(data: bytes | memoryview, expected_size: int, what: str) -> bytes:
    """Decompress exactly one frame, refusing to produce more than ``expected_size``
    bytes (a hostile header cannot make it allocate more)."""
    decompressor = _decompressor()
    try:
        declared = zstandard.frame_content_size(data)
        if declared not in (expected_size, -1):
            raise IntegrityError(f"{what}: frame says {declared} bytes, expected {expected_size}")
        out = decompressor.decompress(
            data, max_output_size=expected_size + 1, allow_extra_data=False
        )
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what}: cannot decompress ({e})") from None
    if len(out) != expected_size:
        raise IntegrityError(f"{what}: decompressed to {len(out)} bytes, expected {expected_size}")
    return out
