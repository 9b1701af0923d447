"""Keys, keyed ids and authenticated encryption.

Every object is sealed with AES-256-GCM under a subkey derived by HKDF from the
repository's encryption key and a fresh random 256-bit salt (one per pack or per
standalone object). Inside one pack, nonces are a counter. A nonce therefore never
repeats: two writers would need the same 256-bit salt. Associated data binds each
ciphertext to its object type (and, for blobs, its id), so data cannot pose as metadata.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16
SALT_SIZE = 32
OBJECT_MAGIC = b"SRO1"
BLOB_OVERHEAD = NONCE_SIZE + TAG_SIZE


@dataclass(frozen=True)
class MasterKey:
    """The repository's secrets; stored only inside password-protected key files."""

    encryption_key: bytes
    id_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> MasterKey:
        seed = int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
        return cls(os.urandom(32), os.urandom(32), seed or 1)


def blob_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """The keyed content id of a blob: BLAKE3 keyed with the repository's id key."""
    return blake3.blake3(data, key=id_key, max_threads=1).digest()


def storage_id(data: bytes | bytearray | memoryview) -> str:
    """The storage name of an object: SHA-256 of its stored bytes, so check needs no key."""
    return hashlib.sha256(data).hexdigest()


def derive_subkey(key: bytes, salt: bytes, purpose: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"strongroom " + purpose)
    return AESGCM(hkdf.derive(key))


def seal(key: MasterKey, kind: bytes, plaintext: bytes) -> bytes:
    """Encrypt a standalone object (index, snapshot, config) of the given kind."""
    salt = os.urandom(SALT_SIZE)
    aead = derive_subkey(key.encryption_key, salt, b"object v1")
    return OBJECT_MAGIC + salt + aead.encrypt(b"\0" * NONCE_SIZE, plaintext, b"object/" + kind)


def unseal(key: MasterKey, kind: bytes, data: bytes, what: str) -> bytes:
    """Decrypt and authenticate a standalone object; IntegrityError names ``what``."""
    head = len(OBJECT_MAGIC) + SALT_SIZE
    if len(data) < head + TAG_SIZE or data[: len(OBJECT_MAGIC)] != OBJECT_MAGIC:
        raise IntegrityError(f"{what}: not a strongroom object (damaged or truncated)")
    aead = derive_subkey(key.encryption_key, data[len(OBJECT_MAGIC) : head], b"object v1")
    try:
        return aead.decrypt(b"\0" * NONCE_SIZE, data[head:], b"object/" + kind)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None


class PackCipher:
    """Encrypts blobs into one pack: one subkey per pack, a counter for nonces."""

    def __init__(self, key: MasterKey, salt: bytes | None = None) -> None:
        self.salt = os.urandom(SALT_SIZE) if salt is None else salt
        self._aead = derive_subkey(key.encryption_key, self.salt, b"pack v1")
        self._counter = 0

    def encrypt(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        return b"".join(self.encrypt_parts(aad, plaintext))

    def encrypt_parts(self, aad: bytes, plaintext: bytes | memoryview) -> tuple[bytes, bytes]:
        """``encrypt``'s nonce and the rest, apart."""
        nonce = self._next_nonce()
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def encrypt_into(self, aad: bytes, plaintext: bytes | memoryview, out: memoryview) -> bytes:
        """Encrypt into ``out`` (exactly ``len(plaintext) + TAG_SIZE`` bytes, no new
        buffer); returns the nonce, which goes before it."""
        nonce = self._next_nonce()
        self._aead.encrypt_into(nonce, plaintext, aad, out)
        return nonce

    def _next_nonce(self) -> bytes:
        nonce = struct.pack(">4xQ", self._counter)
        self._counter += 1
        return nonce

    def decrypt_into(
        self, aad: bytes, data: bytes | memoryview, out: memoryview, what: str
    ) -> memoryview:
        """``decrypt`` into the start of ``out`` (at least ``len(data) - BLOB_OVERHEAD``
        bytes; no new buffer): the plaintext's view of it. On failure what ``out``
        holds is garbage, never to be used."""
        if len(data) < BLOB_OVERHEAD:
            raise IntegrityError(f"{what}: truncated")
        plain = out[: len(data) - BLOB_OVERHEAD]
        try:
            self._aead.decrypt_into(data[:NONCE_SIZE], data[NONCE_SIZE:], aad, plain)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None
        return plain

    def decrypt(self, aad: bytes, data: bytes | memoryview, what: str) -> bytes:
        if len(data) < BLOB_OVERHEAD:
            raise IntegrityError(f"{what}: truncated")
        try:
            return self._aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], aad)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None
