"""Decoding stored msgpack documents: any failure becomes an IntegrityError."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from strongroom.errors import IntegrityError

T = TypeVar("T")

# What msgspec can raise on hostile bytes besides DecodeError: deeply nested arrays
# (RecursionError), invalid UTF-8 in strings, integers out of range.
DECODE_ERRORS = (msgspec.DecodeError, ValueError, RecursionError, OverflowError, TypeError)


def decode(decoder: msgspec.msgpack.Decoder[T], data: bytes, what: str, kind: str) -> T:
    try:
        return decoder.decode(data)
    except DECODE_ERRORS as e:
        raise IntegrityError(f"{what}: malformed {kind} ({type(e).__name__}: {e})") from None


def decode_as(data: bytes, typ: type[T], what: str, kind: str) -> T:
    decoder: Any = msgspec.msgpack.Decoder(typ)
    result: T = decode(decoder, data, what, kind)
    return result
