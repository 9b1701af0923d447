"""Sealed objects, pack ciphers, keyed ids and key files."""

from __future__ import annotations

import hashlib
import os

import pytest

from strongroom.errors import IntegrityError
from strongroom.repository.crypto import (
    BLOB_OVERHEAD,
    NONCE_SIZE,
    OBJECT_MAGIC,
    MasterKey,
    PackCipher,
    blob_id,
    seal,
    storage_id,
    unseal,
)
from strongroom.repository.keys import TEST_KDF, KeyFile, make_key_file, open_key_file


@pytest.fixture(scope="module")
def key() -> MasterKey:
    return MasterKey.generate()


# --- standalone objects -------------------------------------------------------------------


@pytest.mark.parametrize("plain", [b"", b"x", os.urandom(100_000)], ids=["empty", "1", "100k"])
def test_seal_round_trip(key: MasterKey, plain: bytes) -> None:
    sealed = seal(key, b"snapshot", plain)
    assert sealed.startswith(OBJECT_MAGIC)
    if len(plain) >= 16:  # (a short plaintext can turn up in random bytes by chance)
        assert plain[:16] not in sealed
    assert unseal(key, b"snapshot", sealed, "snapshot x") == plain


def test_seal_is_randomised(key: MasterKey) -> None:
    assert seal(key, b"index", b"same") != seal(key, b"index", b"same")


@pytest.mark.parametrize(
    ("sealed_as", "opened_as"),
    [(b"snapshot", b"index"), (b"index", b"config"), (b"config", b"snapshot")],
)
def test_object_kind_is_authenticated(key: MasterKey, sealed_as: bytes, opened_as: bytes) -> None:
    sealed = seal(key, sealed_as, b"payload")
    with pytest.raises(IntegrityError) as info:
        unseal(key, opened_as, sealed, "object y")
    assert "object y" in str(info.value)


def test_wrong_key_fails(key: MasterKey) -> None:
    sealed = seal(key, b"index", b"payload")
    with pytest.raises(IntegrityError):
        unseal(MasterKey.generate(), b"index", sealed, "x")


def test_every_flipped_byte_is_detected(key: MasterKey) -> None:
    sealed = seal(key, b"snapshot", b"a small snapshot document")
    for i in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[i] ^= 0x01
        with pytest.raises(IntegrityError):
            unseal(key, b"snapshot", bytes(damaged), "s")


@pytest.mark.parametrize("cut", [0, 1, 4, 36, 51])
def test_truncated_objects_are_detected(key: MasterKey, cut: int) -> None:
    sealed = seal(key, b"index", b"payload")
    with pytest.raises(IntegrityError):
        unseal(key, b"index", sealed[:cut], "i")


# --- pack cipher --------------------------------------------------------------------------


def test_pack_cipher_round_trip_and_nonces(key: MasterKey) -> None:
    cipher = PackCipher(key)
    cts = [cipher.encrypt(b"aad", f"blob {i}".encode()) for i in range(100)]
    nonces = {ct[:NONCE_SIZE] for ct in cts}
    assert len(nonces) == 100  # a counter: never repeats within a pack
    reader = PackCipher(key, salt=cipher.salt)
    for i, ct in enumerate(cts):
        assert len(ct) == len(f"blob {i}") + BLOB_OVERHEAD
        assert reader.decrypt(b"aad", ct, "b") == f"blob {i}".encode()


def test_pack_cipher_binds_the_aad(key: MasterKey) -> None:
    cipher = PackCipher(key)
    ct = cipher.encrypt(b"\x00" + bytes(32), b"data")
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"\x01" + bytes(32), ct, "b")
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"\x00" + bytes(31) + b"\x01", ct, "b")


def test_pack_ciphers_have_distinct_salts_and_keys(key: MasterKey) -> None:
    a, b = PackCipher(key), PackCipher(key)
    assert a.salt != b.salt
    ct = a.encrypt(b"aad", b"data")
    with pytest.raises(IntegrityError):
        b.decrypt(b"aad", ct, "b")


def test_pack_cipher_rejects_truncated_input(key: MasterKey) -> None:
    cipher = PackCipher(key)
    with pytest.raises(IntegrityError):
        cipher.decrypt(b"aad", b"short", "b")
    with pytest.raises(IntegrityError):
        cipher.decrypt_into(b"aad", b"short", memoryview(bytearray(64)), "b")


@pytest.mark.parametrize("size", [0, 1, 4096, 1 << 20])
def test_decrypt_into_a_reused_buffer(key: MasterKey, size: int) -> None:
    """The plaintext lands at the start of the buffer given, which may be bigger and
    hold an earlier blob's bytes; a damaged ciphertext is refused."""
    cipher = PackCipher(key)
    plain = os.urandom(size)
    ct = cipher.encrypt(b"aad", plain)
    buffer = memoryview(bytearray(b"\xff" * (size + 100)))
    got = cipher.decrypt_into(b"aad", ct, buffer, "b")
    assert bytes(got) == plain and len(got) == size
    assert bytes(buffer[size:]) == b"\xff" * 100
    damaged = bytearray(ct)
    damaged[-1] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt_into(b"aad", bytes(damaged), buffer, "b")
    with pytest.raises(IntegrityError):
        cipher.decrypt_into(b"other aad", ct, buffer, "b")


# --- ids ----------------------------------------------------------------------------------


def test_blob_ids_are_keyed(key: MasterKey) -> None:
    other = MasterKey.generate()
    assert blob_id(key.id_key, b"data") == blob_id(key.id_key, memoryview(b"data"))
    assert blob_id(key.id_key, b"data") != blob_id(other.id_key, b"data")
    assert len(blob_id(key.id_key, b"")) == 32


def test_storage_id_is_sha256() -> None:
    data = os.urandom(1000)
    assert storage_id(data) == hashlib.sha256(data).hexdigest()
    assert storage_id(bytearray(data)) == storage_id(memoryview(data))


def test_generated_keys_differ_and_have_a_nonzero_seed() -> None:
    keys = [MasterKey.generate() for _ in range(5)]
    assert len({k.encryption_key for k in keys}) == 5
    assert all(0 < k.chunker_seed < (1 << 63) for k in keys)


# --- key files ----------------------------------------------------------------------------


def test_key_file_round_trip(key: MasterKey) -> None:
    kf = make_key_file(key, b"pw", TEST_KDF, "2024-01-01T00:00:00+00:00", "host", "user")
    raw = kf.to_json()
    assert key.encryption_key not in raw and key.id_key not in raw
    parsed = KeyFile.from_json(raw, "key k")
    assert (parsed.created, parsed.hostname, parsed.username) == (
        "2024-01-01T00:00:00+00:00",
        "host",
        "user",
    )
    assert open_key_file(parsed, b"pw") == key
    assert open_key_file(parsed, b"wrong") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 2}',
        b'{"version": 1, "kdf": "argon2id", "iterations": 0, "memory_kib": 8, "lanes": 1,'
        b' "salt": "", "data": ""}',
        b'{"version": 1, "kdf": "argon2id", "iterations": 1, "memory_kib": 99999999999,'
        b' "lanes": 1, "salt": "", "data": ""}',
        b'{"version": 1, "kdf": "argon2id", "iterations": 1, "memory_kib": 8, "lanes": 1,'
        b' "salt": "!!", "data": ""}',
    ],
    ids=["empty", "text", "list", "version", "iterations", "memory", "base64"],
)
def test_malformed_key_files_raise_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        KeyFile.from_json(raw, "key k")
