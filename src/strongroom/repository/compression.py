"""zstd compression, skipped for data that does not compress."""

from __future__ import annotations

import sys
import threading

if sys.version_info >= (3, 14):
    from compression.zstd import ZstdCompressor, ZstdDecompressor, ZstdError
else:
    from backports.zstd import ZstdCompressor, ZstdDecompressor, ZstdError

from strongroom.errors import IntegrityError

DEFAULT_LEVEL = 3
# Store raw when zstd saves less than this fraction: decompression is not free.
MIN_SAVING = 0.02

_local = threading.local()


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes | None:
    """zstd frame of ``data``, or None when compression would not pay."""
    compressor: ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None or getattr(_local, "level", None) != level:
        compressor = ZstdCompressor(level=level)
        _local.compressor = compressor
        _local.level = level
    out = compressor.compress(data, mode=ZstdCompressor.FLUSH_FRAME)
    if len(out) > len(data) * (1 - MIN_SAVING):
        return None
    return out


def decompress(data: bytes, expected_size: int, what: str) -> bytes:
    """Decompress one frame, refusing to produce more than ``expected_size`` bytes."""
    try:
        out = ZstdDecompressor().decompress(data, max_length=expected_size + 1)
    except ZstdError as e:
        raise IntegrityError(f"{what}: cannot decompress ({e})") from None
    if len(out) != expected_size:
        raise IntegrityError(f"{what}: decompressed to {len(out)} bytes, expected {expected_size}")
    return out
