"""Durations and sizes parse into seconds and bytes, and bad ones say how to write them."""

from __future__ import annotations

import pytest

from strongroom.config import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("0s", 0),
        (" 5m ", 300),
    ],
)
def test_a_duration_is_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["12x", "12", "", "h", "1.5h", "-3h", "12 h", "12H", "1h 30m"])
def test_a_bad_duration_names_itself_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == f'invalid duration "{text}" (use 30s, 15m, 12h, 7d)'


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("10MB", 10_000_000),
        ("2GiB", 2 * 2**30),
        ("1.5KiB", 1536),
        ("3 TB", 3 * 10**12),
        ("1TiB", 2**40),
    ],
)
def test_a_size_is_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10XB", "KiB", "", "-1KiB", "1,5MB", "1 K"])
def test_a_bad_size_names_itself_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(text)
    assert str(caught.value) == f'invalid size "{text}" (use 512B, 1KiB, 10MB, 2GiB)'


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (90, "1m30s"), (43200, "12h"), (694800, "1w1d1h")]
)
def test_a_duration_is_written_back_the_way_it_parses(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
