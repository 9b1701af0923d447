"""R4: truncation and leftovers are handled.

Objects of every kind are cut to 0, 1, n/2 and n-1 bytes, or have garbage appended:
``check --read-data`` detects each (13; 12 when the only key no longer opens) and no
restore writes a wrong byte. Empty or partial temporary files (``.tmp-*``, what an
interrupted atomic write leaves) are ignored by every command.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.reliability.conftest import Template
from tests.reliability.helpers import (
    assert_check_ok,
    assert_restored_exactly,
    backup,
    check,
    evict,
    restore,
)
from tests.reliability.test_r03_bitflips import (
    KINDS,
    damage_detected,
    objects_by_kind,
    restores_nothing_wrong,
)

MODES = ("to-0", "to-1", "to-half", "to-n-minus-1", "append-garbage")


def _cut(data: bytes, mode: str, rng: random.Random) -> bytes:
    n = len(data)
    return {
        "to-0": b"",
        "to-1": data[:1],
        "to-half": data[: n // 2],
        "to-n-minus-1": data[: n - 1],
        "append-garbage": data + rng.randbytes(rng.randrange(1, 200)),
    }[mode]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_truncated_or_extended_object_is_detected(
    small_repo: Path, small_repo_template: Template, tmp_path: Path, kind: str, mode: str
) -> None:
    rng = random.Random(f"{kind}-{mode}")
    # The largest object of its kind: the one whose loss costs the most.
    path = max(objects_by_kind(small_repo)[kind], key=lambda p: (p.stat().st_size, p.name))
    path.write_bytes(_cut(path.read_bytes(), mode, rng))
    evict(path)
    where = f"{kind} {path.relative_to(small_repo)} cut {mode}"
    code = damage_detected(small_repo, kind, path, where)
    restores_nothing_wrong(small_repo, small_repo_template, kind, path, code, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_damaged_second_key_is_reported_and_harmless(
    small_repo: Path,
    small_repo_template: Template,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setenv("STRONGROOM_NEW_PASSWORD", "another password")
    added = cli("--repo", str(small_repo), "--json", "key", "add")
    assert added.code == 0, added.stderr
    key_id = json.loads(added.stdout)["id"]
    key = small_repo / "keys" / key_id
    key.write_bytes(_cut(key.read_bytes(), mode, random.Random(mode)))
    result, doc = check(small_repo)
    assert result.code == 13, f"a damaged key file ({mode}) went unreported: {doc}"
    assert any(f"key {key_id[:8]}" in e for e in doc["errors"]), doc["errors"]
    for sid, expected in small_repo_template.snapshots.items():
        target = tmp_path / sid[:8]
        r = restore(small_repo, sid, target)
        assert r.code == 0, r.stderr
        assert_restored_exactly(target, small_repo_template.src, expected)


def test_leftover_temp_files_are_ignored(
    small_repo: Path, small_repo_template: Template, tmp_path: Path
) -> None:
    objects = objects_by_kind(small_repo)
    pack = objects["data-pack"][0]
    index = objects["index"][0]
    leftovers = {
        small_repo / "data" / ".tmp-stray": b"",
        pack.parent / f".tmp-{pack.name}-0badc0de": b"",
        pack.parent / f".tmp-{'e' * 64}-12345678": pack.read_bytes()[: pack.stat().st_size // 2],
        small_repo / "data" / "ff" / ".tmp-lonely": b"",
        index.parent / f".tmp-{index.name}-00000000": b"",
        small_repo / "snapshots" / f".tmp-{'a' * 64}-00000001": b"",
        small_repo / "keys" / f".tmp-{'b' * 64}-00000002": b"",
    }
    for path, data in leftovers.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    doc = assert_check_ok(small_repo, "with temporary files lying around")
    assert doc["snapshots"] == len(small_repo_template.snapshots)
    listed = cli("--repo", str(small_repo), "--json", "snapshots")
    assert listed.code == 0, listed.stderr
    assert sorted(s["id"] for s in json.loads(listed.stdout)) == sorted(
        small_repo_template.snapshots
    )
    for sid, expected in small_repo_template.snapshots.items():
        target = tmp_path / sid[:8]
        r = restore(small_repo, sid, target)
        assert r.code == 0, r.stderr
        assert_restored_exactly(target, small_repo_template.src, expected)
    backup(small_repo, small_repo_template.src, "after-leftovers")
    assert_check_ok(small_repo, "after a backup into a repository with temporary files")
    for path in leftovers:
        # Another writer may still be filling a temporary file: a backup leaves them be.
        assert path.exists(), f"{path} vanished during a backup"
