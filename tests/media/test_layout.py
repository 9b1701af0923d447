"""The volume layout and label rules, as pure functions: table-driven."""

from __future__ import annotations

import hashlib
import json

import pytest

from strongroom.cli.commands.media import parse_since, retention_horizon
from strongroom.config.jobs import Retention
from strongroom.engine.volumes import (
    BLOCK,
    END_OF_ARCHIVE,
    RECORD,
    VolumeObject,
    layout,
    parse_label,
)
from strongroom.errors import IntegrityError, UsageError

HEAD = [VolumeObject("config", 180, "0" * 64), VolumeObject("keys/" + "a" * 64, 413, "a" * 64)]


def obj(n: int, size: int) -> VolumeObject:
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    return VolumeObject(f"data/{digest[:2]}/{digest}", size, digest)


def volume_bytes(pieces: list, reserved: int) -> int:  # type: ignore[type-arg]
    return reserved + sum(BLOCK + -(-p.length // BLOCK) * BLOCK for p in pieces) + END_OF_ARCHIVE


@pytest.mark.parametrize(
    ("sizes", "capacity", "volumes"),
    [
        ([1000], 10 * RECORD, 1),
        ([3 * RECORD], 10 * RECORD, 1),
        ([20 * RECORD], 10 * RECORD, 3),  # one object over three volumes
        ([5 * RECORD, 5 * RECORD, 5 * RECORD], 10 * RECORD, 2),
        ([1, 2, 3, 511, 512, 513, 10_000], 10 * RECORD, 1),
        ([0, 7 * RECORD + 5000, 100], 8 * RECORD, 2),
    ],
)
def test_objects_are_laid_out_whole_or_in_contiguous_parts(
    sizes: list[int], capacity: int, volumes: int
) -> None:
    payload = [obj(n, size) for n, size in enumerate(sizes)]
    reserved = 4 * BLOCK
    laid = layout(HEAD, payload, capacity, reserved)
    assert len(laid) == volumes
    for pieces in laid:
        assert [p.object for p in pieces[: len(HEAD)]] == HEAD  # config and keys on each
        assert volume_bytes(pieces, reserved) <= capacity
    covered: dict[str, list[tuple[int, int, int]]] = {}
    for pieces in laid:
        for p in pieces[len(HEAD) :]:
            covered.setdefault(p.object.name, []).append((p.offset, p.length, p.part))
    assert list(covered) == [o.name for o in payload]  # in order, each exactly once
    for o in payload:
        parts = covered[o.name]
        assert sum(length for _, length, _ in parts) == o.size
        offsets = [0]
        for _, length, _ in parts[:-1]:
            offsets.append(offsets[-1] + length)
        assert [offset for offset, _, _ in parts] == offsets
        if len(parts) == 1:
            assert parts[0][2] == 0  # a whole object: no part number
        else:
            assert [part for _, _, part in parts] == list(range(1, len(parts) + 1))


def test_part_member_names() -> None:
    big = obj(1, 30 * RECORD)
    laid = layout(HEAD, [big], 10 * RECORD, 4 * BLOCK)
    members = [p.member for pieces in laid for p in pieces if p.object == big]
    assert members == [f"{big.name}.part{n:03d}" for n in range(1, len(members) + 1)]
    assert all(len(m) < 100 for m in members)  # plain ustar names


def test_a_volume_too_small_for_its_head_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        layout(HEAD, [obj(1, 10)], 2 * RECORD, 2 * RECORD - 3 * BLOCK)


def label_doc(**changes: object) -> bytes:
    digest = hashlib.sha256(b"x").hexdigest()
    doc: dict[str, object] = {
        "format": "strongroom volume 1",
        "label": "A1",
        "volume_id": "v",
        "set_id": "s" * 32,
        "sequence": 1,
        "total": 2,
        "labels": ["A1", "A2"],
        "created": "2026-11-25T00:00:00Z",
        "repository_id": "r",
        "volume_size": 10 * RECORD,
        "record_size": RECORD,
        "snapshots": [digest],
        "members": [
            {"member": "config", "object": "config", "offset": 0, "length": 5, "size": 5,
             "sha256": digest},
            {"member": f"data/{digest[:2]}/{digest}.part001", "object":
             f"data/{digest[:2]}/{digest}", "offset": 0, "length": 512, "size": 2000,
             "sha256": digest},
        ],
    }  # fmt: skip
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_good_label_parses() -> None:
    label = parse_label(label_doc(), "v")
    assert (label.sequence, label.total, label.labels) == (1, 2, ("A1", "A2"))
    assert label.members[1].member.endswith(".part001")


def member(name: str, offset: int, length: int, size: int, sha: str, part: str = "") -> object:
    return {"member": name + part, "object": name, "offset": offset, "length": length,
            "size": size, "sha256": sha}  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {"format": "something else"},
        {"sequence": 3},
        {"sequence": 0},
        {"labels": ["A1"]},
        {"label": "A2"},  # not in its place in the set's labels
        {"total": "2"},
        {"snapshots": ["not hex"]},
        {"members": [member("../etc/passwd", 0, 1, 1, "0" * 64)]},
        {"members": [member("data/00/" + "1" * 64, 0, 1, 1, "1" * 64)]},  # wrong prefix
        {"members": [member("keys/" + "1" * 64, 0, 1, 1, "2" * 64)]},  # hash is not name
        {"members": [member("config", 4, 2, 5, "0" * 64, ".part001")]},  # past the end
        {"members": [member("config", 0, 1, 2**40, "0" * 64)]},  # too large
        {"members": [member("config", 0, 1, 1, "0" * 64, ".tmp")]},  # not a part name
    ],
)
def test_damaged_labels_are_integrity_errors(changes: dict[str, object]) -> None:
    with pytest.raises(IntegrityError):
        parse_label(label_doc(**changes), "v")


def test_labels_that_are_not_json_are_integrity_errors() -> None:
    for raw in (b"", b"\xff\xfe", b"[1, 2]", b'{"format": "strongroom volume 1"}'):
        with pytest.raises(IntegrityError):
            parse_label(raw, "v")


@pytest.mark.parametrize(
    ("retention", "horizon"),
    [
        (Retention(), None),
        (Retention(last=10), None),
        (Retention(daily=7), 7 * 86400),
        (Retention(daily=7, weekly=4, monthly=12), 12 * 31 * 86400),
        (Retention(hourly=48, within=3 * 86400), 3 * 86400),
        (Retention(yearly=2, daily=30), 2 * 366 * 86400),
    ],
)
def test_the_retention_horizon_is_its_longest_period(
    retention: Retention, horizon: int | None
) -> None:
    assert retention_horizon(retention) == horizon


NOW = 1_764_028_800 * 10**9  # 2025-11-25T00:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("last week", NOW - 7 * 86400 * 10**9),
        ("Last Day", NOW - 86400 * 10**9),
        ("7d", NOW - 7 * 86400 * 10**9),
        ("12h", NOW - 12 * 3600 * 10**9),
        ("2025-11-20T00:00:00Z", NOW - 5 * 86400 * 10**9),
    ],
)
def test_since(text: str, expected: int) -> None:
    assert parse_since(text, NOW) == expected


def test_since_rejects_nonsense() -> None:
    with pytest.raises(UsageError):
        parse_since("last fortnight", NOW)
