"""Packs: blobs in, header at the end, named by their SHA-256; type and id authenticated."""

from __future__ import annotations

import hashlib
import os

import pytest
import zstandard

from strongroom.backend import MemoryBackend
from strongroom.errors import IntegrityError
from strongroom.repository import DATA, TEST_KDF, TREE, Repository
from strongroom.repository.crypto import MasterKey, blob_id
from strongroom.repository.pack import (
    DATA_OFFSET,
    FLAG_COMPRESSED,
    PACK_MAGIC,
    PackEntry,
    PackWriter,
    cipher_for,
    compress_blob,
    open_blob,
    open_blob_transient,
    pack_name,
    read_header,
)


@pytest.fixture(scope="module")
def key() -> MasterKey:
    return MasterKey.generate()


def blobs() -> list[tuple[int, bytes]]:
    return [
        (DATA, os.urandom(100_000)),  # random: stored raw
        (DATA, b"compressible " * 10_000),  # compresses well
        (TREE, b'{"nodes": []}' * 50),
        (DATA, b""),
        (DATA, b"tiny"),  # too small to bother compressing
        (DATA, b"a" * 65),
    ]


def write_pack(key: MasterKey) -> tuple[str, bytes, list[PackEntry], list[tuple[int, bytes]]]:
    writer = PackWriter(key, 3)
    items = blobs()
    for blob_type, data in items:
        writer.add(blob_type, blob_id(key.id_key, data), data)
    pack_id, data = writer.finish()
    return pack_id, data, writer.entries, items


def test_pack_name_is_the_sha256_of_its_bytes(key: MasterKey) -> None:
    pack_id, data, _, _ = write_pack(key)
    assert pack_id == hashlib.sha256(data).hexdigest()
    assert pack_name(pack_id) == f"data/{pack_id[:2]}/{pack_id}"
    assert data.startswith(PACK_MAGIC)


def test_round_trip_through_the_header(key: MasterKey) -> None:
    _, data, entries, items = write_pack(key)
    header = read_header(key, data, "pack p")
    assert header == entries
    cipher = cipher_for(key, data[:DATA_OFFSET], "pack p")
    for entry, (blob_type, plain) in zip(header, items, strict=True):
        assert entry.type == blob_type
        assert entry.raw_length == len(plain)
        ct = data[entry.offset : entry.offset + entry.length]
        assert open_blob(key, cipher, entry, ct, "blob b") == plain


def test_transient_open_gives_the_same_content_and_checks_it(key: MasterKey) -> None:
    _, data, entries, items = write_pack(key)
    cipher = cipher_for(key, data[:DATA_OFFSET], "pack p")
    for entry, (_, plain) in zip(entries, items, strict=True):
        ct = data[entry.offset : entry.offset + entry.length]
        assert bytes(open_blob_transient(key, cipher, entry, ct, "blob b")) == plain
    # A compressed blob whose content is not what its id says (a forged index entry
    # pointing at another blob's data) is refused, as by open_blob.
    compressed = [e for e in entries if e.compressed]
    assert compressed
    entry = compressed[0]
    other = PackEntry(entry.type, bytes(32), entry.offset, entry.length, entry.raw_length, 1)
    ct = data[entry.offset : entry.offset + entry.length]
    with pytest.raises(IntegrityError):
        open_blob_transient(key, cipher, other, ct, "blob b")


@pytest.mark.parametrize("size", [100, 256 * 1024, 1 << 20, (4 << 20) + 1])
def test_a_new_frame_is_checked_against_its_content(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    frame = compress_blob(3, memoryview(data))
    assert frame is not None and len(frame) < size
    # A compressor that returns a frame of something else (one byte off, anywhere:
    # first piece, last, or the length) is caught, and nothing is stored.
    # Small bytes are checked in one call, anything else piece by piece: both ways.
    # A frame without its size in the header, and bytes that are no frame at all.
    unsized = zstandard.ZstdCompressor(level=3, write_content_size=False)
    frames = [
        *(
            zstandard.ZstdCompressor(level=3).compress(other)
            for other in (b"X" + data[1:], data[:-1] + b"X", data[:-1], data + b"0")
        ),
        unsized.compress(data + b"0"),
        unsized.compress(data[:-1]),
        b"not a zstd frame at all",
    ]
    for wrong in frames:
        monkeypatch.setattr("strongroom.repository.compression.compress", lambda d, lv, w=wrong: w)
        for content in (data, memoryview(data)):
            with pytest.raises(IntegrityError, match="round trip"):
                compress_blob(3, content)
    monkeypatch.undo()
    assert compress_blob(3, data) == frame


def test_compression_only_when_it_pays(key: MasterKey) -> None:
    _, _, entries, items = write_pack(key)
    flags = [e.flags & FLAG_COMPRESSED for e in entries]
    assert flags == [0, FLAG_COMPRESSED, FLAG_COMPRESSED, 0, 0, FLAG_COMPRESSED]
    random_entry, compressible = entries[0], entries[1]
    assert random_entry.length == len(items[0][1]) + 28  # raw: only nonce and tag added
    assert compressible.length < len(items[1][1]) // 10


def test_plaintext_does_not_appear_in_the_pack(key: MasterKey) -> None:
    writer = PackWriter(key, 3)
    secret = b"SECRET-MARKER-" + os.urandom(8).hex().encode()
    writer.add(DATA, blob_id(key.id_key, secret), secret)
    _, data = writer.finish()
    assert secret not in data


def test_type_is_authenticated(key: MasterKey) -> None:
    """A data blob presented as a tree (or the reverse) does not decrypt."""
    _, data, entries, _ = write_pack(key)
    cipher = cipher_for(key, data, "p")
    for entry in entries:
        other = TREE if entry.type == DATA else DATA
        forged = PackEntry(
            other, entry.id, entry.offset, entry.length, entry.raw_length, entry.flags
        )
        with pytest.raises(IntegrityError):
            open_blob(key, cipher, forged, data[entry.offset : entry.offset + entry.length], "b")


def test_id_is_authenticated(key: MasterKey) -> None:
    _, data, entries, _ = write_pack(key)
    cipher = cipher_for(key, data, "p")
    a, b = entries[0], entries[1]
    # blob b's ciphertext under blob a's id: refused
    forged = PackEntry(a.type, a.id, b.offset, b.length, b.raw_length, b.flags)
    with pytest.raises(IntegrityError):
        open_blob(key, cipher, forged, data[b.offset : b.offset + b.length], "b")


def test_wrong_lengths_are_detected(key: MasterKey) -> None:
    _, data, entries, _ = write_pack(key)
    cipher = cipher_for(key, data, "p")
    for entry in (entries[0], entries[1]):
        forged = PackEntry(
            entry.type, entry.id, entry.offset, entry.length, entry.raw_length + 1, entry.flags
        )
        with pytest.raises(IntegrityError):
            open_blob(key, cipher, forged, data[entry.offset : entry.offset + entry.length], "b")


def test_a_pack_from_another_repository_does_not_open(key: MasterKey) -> None:
    _, data, _, _ = write_pack(key)
    with pytest.raises(IntegrityError):
        read_header(MasterKey.generate(), data, "p")


@pytest.mark.parametrize("where", ["magic", "salt", "blob", "header", "trailer"])
def test_damage_anywhere_is_detected(key: MasterKey, where: str) -> None:
    _, data, entries, _ = write_pack(key)
    offsets = {
        "magic": 0,
        "salt": 10,
        "blob": entries[0].offset + 20,
        "header": len(data) - 30,
        "trailer": len(data) - 2,
    }
    damaged = bytearray(data)
    damaged[offsets[where]] ^= 0x40
    with pytest.raises(IntegrityError):
        entries_read = read_header(key, bytes(damaged), "p")
        cipher = cipher_for(key, bytes(damaged), "p")
        for e in entries_read:
            open_blob(key, cipher, e, bytes(damaged[e.offset : e.offset + e.length]), "b")


@pytest.mark.parametrize("cut", [0, 1, 35, 36, 100, -1, -5])
def test_truncated_packs_are_detected(key: MasterKey, cut: int) -> None:
    _, data, _, _ = write_pack(key)
    with pytest.raises(IntegrityError):
        read_header(key, data[:cut], "p")


def test_repository_stores_packs_under_their_hash() -> None:
    backend = MemoryBackend()
    repo = Repository.init(backend, b"pw", kdf=TEST_KDF, created="", hostname="h", username="u")
    writer = repo.new_pack_writer()
    payload = b"some data " * 100
    bid = blob_id(repo.master.id_key, payload)
    writer.add(DATA, bid, payload)
    pack_id, size = repo.upload_pack(writer)
    stored = backend.load(pack_name(pack_id))
    assert len(stored) == size
    assert hashlib.sha256(stored).hexdigest() == pack_id
    assert repo.load_blob(bid, DATA) == payload
    with pytest.raises(IntegrityError):
        repo.load_blob(bid, TREE)  # asked for as a tree: refused
    repo.flush_index()
    reopened = Repository.open(backend, b"pw")
    reopened.load_index()
    assert reopened.load_blob(bid, DATA) == payload
