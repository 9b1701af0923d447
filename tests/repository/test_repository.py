"""The Repository object: init/open, keys, index loading, snapshots."""

from __future__ import annotations

import hashlib

import pytest

from strongroom.backend import MemoryBackend
from strongroom.errors import (
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPasswordError,
)
from strongroom.repository import DATA, TEST_KDF, TREE, Repository, Snapshot
from strongroom.repository.crypto import blob_id
from strongroom.repository.pack import pack_name

PW = b"pw"


def new_repo(backend: MemoryBackend | None = None) -> tuple[MemoryBackend, Repository]:
    backend = backend or MemoryBackend()
    repo = Repository.init(backend, PW, kdf=TEST_KDF, created="now", hostname="h", username="u")
    return backend, repo


def store(repo: Repository, blob_type: int, data: bytes) -> tuple[bytes, str]:
    bid = blob_id(repo.master.id_key, data)
    writer = repo.new_pack_writer()
    writer.add(blob_type, bid, data)
    pack_id, _ = repo.upload_pack(writer)
    repo.flush_index()
    return bid, pack_id


def test_init_then_open() -> None:
    backend, repo = new_repo()
    opened = Repository.open(backend, PW)
    assert opened.id == repo.id and opened.key_id == repo.key_id
    assert opened.master == repo.master
    assert opened.chunker_params == repo.chunker_params


def test_init_refuses_an_existing_repository() -> None:
    backend, _ = new_repo()
    before = dict(backend.objects)
    with pytest.raises(RepositoryExists):
        new_repo(backend)
    assert backend.objects == before


def test_open_of_nothing_is_repository_not_found() -> None:
    backend = MemoryBackend()
    backend.create()
    with pytest.raises(RepositoryNotFound) as info:
        Repository.open(backend, PW)
    assert info.value.exit_code == 10


def test_wrong_password() -> None:
    backend, _ = new_repo()
    with pytest.raises(WrongPasswordError) as info:
        Repository.open(backend, b"nope")
    assert info.value.exit_code == 12


def test_a_damaged_key_file_does_not_stop_another_key() -> None:
    backend, repo = new_repo()
    second = repo.add_key(b"second", kdf=TEST_KDF, created="", hostname="", username="")
    _, mtime = backend.objects[f"keys/{repo.key_id}"]
    backend.objects[f"keys/{repo.key_id}"] = (b"{garbage", mtime)
    opened = Repository.open(backend, b"second")
    assert opened.key_id == second
    with pytest.raises(WrongPasswordError) as info:
        Repository.open(backend, PW)
    assert "damaged" in str(info.value)


def test_tampered_config_is_an_integrity_error() -> None:
    backend, _ = new_repo()
    data, mtime = backend.objects["config"]
    backend.objects["config"] = (data[:-1] + bytes([data[-1] ^ 1]), mtime)
    with pytest.raises(IntegrityError):
        Repository.open(backend, PW)


def test_keys_add_list_remove() -> None:
    backend, repo = new_repo()
    other = repo.add_key(b"other", kdf=TEST_KDF, created="c", hostname="hh", username="uu")
    keys = {k.id: k for k in repo.list_keys()}
    assert set(keys) == {repo.key_id, other}
    assert keys[repo.key_id].current and not keys[other].current
    assert keys[other].hostname == "hh"
    assert repo.resolve_key(other[:8]) == other
    with pytest.raises(UsageError):
        repo.resolve_key("")  # matches both
    with pytest.raises(UsageError):
        repo.remove_key(repo.key_id)  # the one in use
    repo.remove_key(other)
    assert [k.id for k in repo.list_keys()] == [repo.key_id]
    with pytest.raises(WrongPasswordError):
        Repository.open(backend, b"other")


def test_blobs_survive_a_reopen_and_types_are_checked() -> None:
    backend, repo = new_repo()
    bid, _ = store(repo, DATA, b"payload " * 100)
    reopened = Repository.open(backend, PW)
    reopened.load_index()
    assert reopened.index_errors == [] and reopened.missing_packs == set()
    assert reopened.load_blob(bid, DATA) == b"payload " * 100
    with pytest.raises(IntegrityError):
        reopened.load_blob(bid, TREE)
    with pytest.raises(IntegrityError):
        reopened.load_blob(blob_id(repo.master.id_key, b"never stored"))


def test_a_missing_pack_is_noticed_when_the_index_loads() -> None:
    backend, repo = new_repo()
    bid, pack_id = store(repo, DATA, b"x" * 1000)
    backend.remove(pack_name(pack_id))
    reopened = Repository.open(backend, PW)
    reopened.load_index()
    assert reopened.missing_packs == {pack_id}
    assert not reopened.has_blob(bid)
    with pytest.raises(IntegrityError):
        reopened.load_blob(bid)


def test_a_damaged_index_file_is_recorded_not_raised() -> None:
    backend, repo = new_repo()
    store(repo, DATA, b"x" * 1000)
    (name,) = [i.name for i in backend.list("index/")]
    data, mtime = backend.objects[name]
    backend.objects[name] = (data[:-3], mtime)
    reopened = Repository.open(backend, PW)
    reopened.load_index()
    assert len(reopened.index_errors) == 1
    assert name.rsplit("/", 1)[-1][:8] in reopened.index_errors[0]


def test_snapshot_round_trip_and_naming() -> None:
    backend, repo = new_repo()
    tree, _ = store(repo, TREE, b"\x91\x90")  # an empty tree, msgpack [[]]
    snap = Snapshot(time_ns=123, tree=tree, paths=["/x"], client="c", tags=["t"])
    sid = repo.save_snapshot(snap)
    raw = backend.load(f"snapshots/{sid}")
    assert hashlib.sha256(raw).hexdigest() == sid
    loaded = repo.load_snapshot(sid)
    assert loaded.id == sid
    assert (loaded.time_ns, loaded.tree, loaded.paths, loaded.client, loaded.tags) == (
        123,
        tree,
        ["/x"],
        "c",
        ["t"],
    )
    assert repo.snapshot_ids() == [sid]


def test_snapshots_are_sorted_by_time_and_damage_is_reported() -> None:
    backend, repo = new_repo()
    tree, _ = store(repo, TREE, b"\x91\x90")
    ids = [
        repo.save_snapshot(Snapshot(time_ns=t, tree=tree, paths=["/"], client=str(t)))
        for t in (30, 10, 20)
    ]
    assert [s.time_ns for s in repo.snapshots()] == [10, 20, 30]
    # a snapshot object under another snapshot's name
    backend.save(f"snapshots/{ids[0]}", backend.load(f"snapshots/{ids[1]}"))
    with pytest.raises(IntegrityError):
        repo.load_snapshot(ids[0])
    errors: list[str] = []
    snaps = repo.snapshots(on_error=lambda sid, e: errors.append(sid))
    assert errors == [ids[0]]
    assert [s.time_ns for s in snaps] == [10, 20]
    with pytest.raises(UsageError):
        repo.load_snapshot("0" * 64)
