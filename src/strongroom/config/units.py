"""Durations ("12h", "7d") and sizes ("1KiB", "10MB") as written in the config."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationInfo

from strongroom.config.names import quote

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
FROM_FILE = "from_file"  # validation context key: the values come from a config file
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_duration(text: str) -> int:
    """Seconds in ``text``: one or more number+unit parts (s, m, h, d, w), like "1h30m".

    Raises ValueError with a message fit for a user when ``text`` is not a duration.
    """
    compact = text.strip()
    if not _DURATION.fullmatch(compact):
        raise ValueError(f"invalid duration {quote(text)} (use 30s, 15m, 12h, 7d)")
    return sum(int(n) * DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(compact))


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number and an optional unit (B, KB, MB, GB, TB, KiB ... TiB).

    Fractions are allowed ("1.5GiB") and rounded down to whole bytes.
    Raises ValueError with a message fit for a user when ``text`` is not a size.
    """
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise ValueError(f"invalid size {quote(text)} (use 512B, 1KiB, 10MB, 2GiB)")
    return int(Decimal(match.group(1)) * SIZE_UNITS[unit])


def format_duration(seconds: int) -> str:
    """The shortest spelling of ``seconds`` that parse_duration reads back."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _duration_field(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    # In a file a bare number is ambiguous; in code it is seconds.
    written = isinstance(info.context, dict) and info.context.get(FROM_FILE)
    if written and isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"invalid duration {value} (write it with a unit: 30s, 15m, 12h, 7d)")
    return value  # strict validation then names a wrong type


def _size_field(value: object) -> object:
    if isinstance(value, str):
        return parse_size(value)
    return value  # a plain integer is a count of bytes


Duration = Annotated[int, BeforeValidator(_duration_field)]
Size = Annotated[int, BeforeValidator(_size_field), Field(ge=0)]
