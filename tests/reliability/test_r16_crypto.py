"""R16: ciphertexts cannot be swapped or replayed.

* Every byte of small objects (a snapshot, an index file, the config, the key file, a
  small pack) is changed in turn: every change is rejected.
* Type confusion: data posing as a tree, a tree posing as file data, an index or a
  config or a pack blob posing as a snapshot, a snapshot posing as an index: rejected.
* A wrong password exits 12 and prints nothing of the repository's contents.
* Nonces never repeat: across many pack ciphers, across forked processes, and across a
  whole repository written by several worker threads.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.engine.checker import Checker
from strongroom.errors import IntegrityError, WrongPasswordError
from strongroom.repository import DATA, TREE, Node, Repository, Snapshot
from strongroom.repository.crypto import (
    NONCE_SIZE,
    OBJECT_MAGIC,
    SALT_SIZE,
    PackCipher,
    blob_id,
    seal,
    storage_id,
    unseal,
)
from strongroom.repository.pack import (
    DATA_OFFSET,
    TRAILER,
    PackEntry,
    cipher_for,
    open_blob,
    pack_name,
    read_header,
)
from strongroom.repository.tree import encode_tree
from tests.conftest import PASSWORD, cli
from tests.reliability.conftest import Template
from tests.reliability.helpers import (
    SEED,
    check,
    cli_json,
    repo_objects,
    restore,
    restored_root,
)

CHILD = Path(__file__).with_name("child.py")


def _open(repo: Path) -> Repository:
    return Repository.open(LocalBackend(repo), PASSWORD.encode())


def _mutations(data: bytes, rng: random.Random) -> list[tuple[int, int]]:
    """(offset, xor) pairs: every byte inverted, and every byte changed at random."""
    return [(i, 0xFF) for i in range(len(data))] + [
        (i, rng.randrange(1, 255)) for i in range(len(data))
    ]


def _mutated(data: bytes, offset: int, xor: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ xor]) + data[offset + 1 :]


def _rejects(func: Callable[[], object], what: str) -> None:
    try:
        func()
    except IntegrityError:
        return
    pytest.fail(f"{what} was accepted")


# --- every byte of small objects ---------------------------------------------------------


def test_every_byte_of_a_snapshot_and_an_index_is_authenticated(small_repo: Path) -> None:
    repo = _open(small_repo)
    rng = random.Random(SEED)
    objects = repo_objects(small_repo)
    snap = min(objects["snapshot"], key=lambda p: p.stat().st_size)
    index = min(objects["index"], key=lambda p: p.stat().st_size)
    for path, kind in ((snap, b"snapshot"), (index, b"index")):
        raw = path.read_bytes()
        unseal(repo.master, kind, raw, "original")  # the original opens
        for offset, xor in _mutations(raw, rng):
            bad = _mutated(raw, offset, xor)
            # The ciphertext itself, whatever name it is stored under:
            _rejects(
                lambda bad=bad, kind=kind: unseal(repo.master, kind, bad, "x"),
                f"{kind.decode()} with byte {offset} ^ {xor:#x}",
            )
    # And through the repository, which also checks the name, for every inverted byte.
    raw = snap.read_bytes()
    for offset in range(len(raw)):
        snap.write_bytes(_mutated(raw, offset, 0xFF))
        _rejects(lambda: repo.load_snapshot(snap.name), f"snapshot with byte {offset} inverted")
    snap.write_bytes(raw)
    raw = index.read_bytes()
    for offset in range(len(raw)):
        index.write_bytes(_mutated(raw, offset, 0xFF))
        repo.load_index()
        assert any(index.name[:8] in e for e in repo.index_errors), (
            f"index with byte {offset} inverted was accepted"
        )
        assert f"index/{index.name}" not in repo.index_files
    index.write_bytes(raw)


def test_every_byte_of_the_config_is_authenticated(small_repo: Path) -> None:
    repo = _open(small_repo)
    raw = (small_repo / "config").read_bytes()
    for offset, xor in _mutations(raw, random.Random(SEED)):
        bad = _mutated(raw, offset, xor)
        _rejects(
            lambda bad=bad: Repository._read_config(repo.master, bad),
            f"config with byte {offset} ^ {xor:#x}",
        )


def test_every_byte_of_the_key_file_is_authenticated(small_repo: Path) -> None:
    """A changed key file either no longer opens, or check reports it as damaged."""
    (key,) = repo_objects(small_repo)["key"]
    raw = key.read_bytes()
    accepted = []
    for offset, xor in _mutations(raw, random.Random(SEED)):
        key.write_bytes(_mutated(raw, offset, xor))
        try:
            repo = _open(small_repo)
        except WrongPasswordError:
            continue
        errors = Checker(repo).check().errors
        if not any(f"key {key.name[:8]}" in e for e in errors):
            accepted.append(offset)
    key.write_bytes(raw)
    assert not accepted, (
        f"{len(accepted)} of {2 * len(raw)} single-byte changes of the key file went "
        f"unnoticed (it opened, and check passed), e.g. at offsets {accepted[:10]}: "
        f"{[raw[max(0, o - 12) : o + 4] for o in accepted[:3]]}"
    )


def test_every_byte_of_a_small_pack_is_authenticated(repo_path: Path) -> None:
    repo = _open(repo_path)
    writer = repo.new_pack_writer()
    blobs = [
        (DATA, b"tiny"),
        (TREE, encode_tree([Node(name=b"x", type="file")])),
        (DATA, b"compressible " * 40),
    ]
    for kind, data in blobs:
        writer.add(kind, blob_id(repo.master.id_key, data), data)
    _, pack = writer.finish()
    pack = bytes(pack)
    entries = read_header(repo.master, pack, "pack")
    (hlen,) = TRAILER.unpack_from(pack, len(pack) - TRAILER.size)
    header_start = len(pack) - TRAILER.size - hlen

    def opens(data: bytes, entry: PackEntry) -> bool:
        try:
            cipher = cipher_for(repo.master, data, "pack")
            chunk = data[entry.offset : entry.offset + entry.length]
            open_blob(repo.master, cipher, entry, chunk, "blob")
        except IntegrityError:
            return False
        return True

    assert all(opens(pack, e) for e in entries)
    for offset, xor in _mutations(pack, random.Random(SEED)):
        bad = _mutated(pack, offset, xor)
        where = f"pack byte {offset} ^ {xor:#x}"
        if offset < DATA_OFFSET:  # magic and salt: nothing in the pack opens
            assert not any(opens(bad, e) for e in entries), where
            _rejects(lambda bad=bad: read_header(repo.master, bad, "pack"), where)
        elif offset < header_start:  # inside one blob: that blob, and only it, fails
            hit = [e for e in entries if e.offset <= offset < e.offset + e.length]
            assert len(hit) == 1, where
            assert [opens(bad, e) for e in entries] == [e is not hit[0] for e in entries], where
        else:  # the header or its length
            _rejects(lambda bad=bad: read_header(repo.master, bad, "pack"), where)


# --- type confusion -----------------------------------------------------------------------


def _forged_snapshot(repo: Repository, tree: bytes) -> str:
    return repo.save_snapshot(Snapshot(time_ns=1, tree=tree, paths=["/forged"], client="forger"))


def _assert_rejected_everywhere(repo_path: Path, sid: str, tmp_path: Path) -> None:
    result, doc = check(repo_path)
    assert result.code == 13, f"check accepted a type confusion: {doc}"
    assert sid in doc["affected"] or any(sid[:8] in e for e in doc["errors"]), doc
    target = tmp_path / "target"
    r = restore(repo_path, sid, target)
    assert r.code == 13, (r.code, r.stderr)
    files = [p for p in target.rglob("*") if not p.is_dir()] if target.exists() else []
    assert files == [], f"restored {files} from a forged snapshot"
    listing = cli("--repo", str(repo_path), "ls", sid)
    assert listing.code == 13, (listing.code, listing.stdout, listing.stderr)
    assert "evil" not in listing.stdout


def test_data_blob_presented_as_a_tree_is_rejected(repo_path: Path, tmp_path: Path) -> None:
    repo = _open(repo_path)
    plain = encode_tree([Node(name=b"evil", type="file", size=0)])
    bid = blob_id(repo.master.id_key, plain)
    writer = repo.new_pack_writer()
    writer.add(DATA, bid, plain)  # stored, authenticated and indexed as data
    repo.upload_pack(writer)
    repo.flush_index()
    _assert_rejected_everywhere(repo_path, _forged_snapshot(repo, bid), tmp_path)


def test_index_claiming_a_data_blob_is_a_tree_is_rejected(repo_path: Path, tmp_path: Path) -> None:
    """Even with the index lying about the type, the blob's authentication (its
    associated data includes the type) refuses it."""
    repo = _open(repo_path)
    plain = encode_tree([Node(name=b"evil", type="file", size=0)])
    bid = blob_id(repo.master.id_key, plain)
    writer = repo.new_pack_writer()
    entry = writer.add(DATA, bid, plain)
    pack_id, data = writer.finish()
    repo.backend.save(pack_name(pack_id), data)
    forged = PackEntry(TREE, bid, entry.offset, entry.length, entry.raw_length, entry.flags)
    repo.write_index({pack_id: [forged]})
    repo.load_index()
    assert repo.lookup(bid) is not None and repo.lookup(bid).type == TREE  # type: ignore[union-attr]
    _assert_rejected_everywhere(repo_path, _forged_snapshot(repo, bid), tmp_path)


def test_tree_blob_presented_as_file_data_is_rejected(repo_path: Path, tmp_path: Path) -> None:
    """A file whose content names a tree blob: restore refuses it, and check must too
    (check passing while restore fails would hide the damage until it is needed)."""
    repo = _open(repo_path)
    inner = encode_tree([Node(name=b"a", type="file")])
    inner_id = blob_id(repo.master.id_key, inner)
    root = encode_tree([Node(name=b"f", type="file", content=[inner_id], size=len(inner))])
    root_id = blob_id(repo.master.id_key, root)
    writer = repo.new_pack_writer()
    writer.add(TREE, inner_id, inner)
    writer.add(TREE, root_id, root)
    repo.upload_pack(writer)
    repo.flush_index()
    sid = _forged_snapshot(repo, root_id)

    target = tmp_path / "target"
    r = restore(repo_path, sid, target)
    assert r.code == 13 and "error: /f: " in r.stderr, (r.code, r.stderr)
    assert not (target / "f").exists()
    result, doc = check(repo_path)
    assert result.code == 13, f"check passed a snapshot that cannot be restored: {doc}"
    assert doc["affected"].get(sid) == ["/f"], doc


@pytest.mark.parametrize("source", ["index", "config", "pack-blob"])
def test_other_objects_presented_as_a_snapshot_are_rejected(
    small_repo: Path, small_repo_template: Template, tmp_path: Path, source: str
) -> None:
    repo = _open(small_repo)
    objects = repo_objects(small_repo)
    if source == "index":
        raw = objects["index"][0].read_bytes()
    elif source == "config":
        raw = (small_repo / "config").read_bytes()[len(b"SRCONFIG1\n") :]
    else:
        # The first blob of a pack was encrypted with nonce 0, as standalone objects
        # are: give it an object's framing and see whether it passes for a snapshot.
        pack = objects["pack"][0].read_bytes()
        first = min(read_header(repo.master, pack, "pack"), key=lambda e: e.offset)
        blob = pack[first.offset : first.offset + first.length]
        assert blob[:NONCE_SIZE] == bytes(NONCE_SIZE)
        raw = OBJECT_MAGIC + pack[4:DATA_OFFSET] + blob[NONCE_SIZE:]
    sid = storage_id(raw)
    (small_repo / "snapshots" / sid).write_bytes(raw)

    result, doc = check(small_repo)
    assert result.code == 13 and any(sid[:8] in e for e in doc["errors"]), doc
    target = tmp_path / "target"
    r = restore(small_repo, sid, target)
    assert r.code == 13, (r.code, r.stderr)
    assert not target.exists() or not any(target.rglob("*"))
    # The genuine snapshots are unaffected.
    listed = cli("--repo", str(small_repo), "--json", "snapshots")
    ids = {s["id"] for s in json.loads(listed.stdout)}
    assert ids == set(small_repo_template.snapshots), ids


def test_snapshot_presented_as_an_index_is_rejected(small_repo: Path) -> None:
    raw = repo_objects(small_repo)["snapshot"][0].read_bytes()
    iid = storage_id(raw)
    (small_repo / "index" / iid).write_bytes(raw)
    result, doc = check(small_repo)
    assert result.code == 13 and any(f"index {iid[:8]}" in e for e in doc["errors"]), doc


# --- wrong password -----------------------------------------------------------------------


def test_wrong_password_exits_12_and_prints_nothing(
    small_repo: Path,
    small_repo_template: Template,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sids = sorted(small_repo_template.snapshots)
    src = small_repo_template.src.resolve().as_posix()
    secrets = [s[:8] for s in sids] + [src, "same-a", "big", "duplicate content"]
    monkeypatch.setenv("STRONGROOM_PASSWORD", "not the password")
    repo = str(small_repo)
    target = tmp_path / "target"
    commands = [
        ["snapshots"],
        ["ls", "latest"],
        ["ls", sids[0]],
        ["find", "*"],
        ["diff", sids[0], sids[1]],
        ["dump", sids[0], f"{src}/d0/same-a"],
        ["restore", sids[0], "--target", str(target)],
        ["check", "--read-data"],
        ["key", "list"],
        ["backup", "--client", "x", src],
    ]
    for args in commands:
        r = cli("--repo", repo, *args)
        assert r.code == 12, (args, r.code, r.stderr)
        assert r.stdout_bytes == b"", (args, r.stdout)
        leaked = [s for s in secrets if s in r.stderr]
        assert not leaked, (args, leaked, r.stderr)
        j, doc = cli_json("--repo", repo, *args)
        assert j.code == 12 and doc["type"] == "error" and doc["exit_code"] == 12, (args, doc)
        assert len([ln for ln in j.stdout.splitlines() if ln.strip()]) == 1, j.stdout
        assert not [s for s in secrets if s in j.stdout + j.stderr], (args, j.stdout)
    assert not target.exists() or not any(target.rglob("*"))
    assert not restored_root(target, small_repo_template.src).exists()


# --- nonces -------------------------------------------------------------------------------


def test_nonces_never_repeat_across_ciphers() -> None:
    from strongroom.repository.crypto import MasterKey

    key = MasterKey.generate()
    pairs: set[bytes] = set()
    count = 0
    for _ in range(2000):
        cipher = PackCipher(key)
        for i in range(25):
            pairs.add(cipher.salt + cipher.encrypt(b"a", b"p" * i)[:NONCE_SIZE])
            count += 1
    for _ in range(2000):
        sealed = seal(key, b"index", b"x")
        pairs.add(sealed[len(OBJECT_MAGIC) : len(OBJECT_MAGIC) + SALT_SIZE] + bytes(NONCE_SIZE))
        count += 1
    assert len(pairs) == count, f"{count - len(pairs)} (salt, nonce) pairs repeated"


def test_nonces_never_repeat_across_forked_processes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "nonces",
            "--forks",
            "16",
            "--ciphers",
            "100",
            "--blobs",
            "20",
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().split()
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(pairs) == 17 * (100 * 20 + 100)
    assert len(set(pairs)) == len(pairs), f"{len(pairs) - len(set(pairs))} pairs repeated"


def test_nonces_never_repeat_in_a_repository(
    small_repo: Path, small_repo_template: Template
) -> None:
    """Every (salt, nonce) used by every blob, pack header and object of a repository
    written by several worker threads over several backups is unique."""
    repo = _open(small_repo)
    # One more backup into the copy: more packs from another run.
    r = cli("--repo", str(small_repo), "backup", "--client", "more", str(small_repo_template.src))
    assert r.code == 0, r.stderr
    used: list[bytes] = []
    objects = repo_objects(small_repo)
    for path in objects["pack"]:
        data = path.read_bytes()
        salt = data[4:DATA_OFFSET]
        (hlen,) = TRAILER.unpack_from(data, len(data) - TRAILER.size)
        start = len(data) - TRAILER.size - hlen
        used.append(salt + data[start : start + NONCE_SIZE])
        for e in read_header(repo.master, data, path.name):
            used.append(salt + data[e.offset : e.offset + NONCE_SIZE])
    for kind in ("index", "snapshot"):
        for path in objects[kind]:
            data = path.read_bytes()
            used.append(data[len(OBJECT_MAGIC) : len(OBJECT_MAGIC) + SALT_SIZE] + bytes(12))
    config = (small_repo / "config").read_bytes()[len(b"SRCONFIG1\n") :]
    used.append(config[len(OBJECT_MAGIC) : len(OBJECT_MAGIC) + SALT_SIZE] + bytes(12))
    assert len(objects["pack"]) >= 10
    assert len(set(used)) == len(used), f"{len(used) - len(set(used))} (salt, nonce) repeats"
