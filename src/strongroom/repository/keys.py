"""Key files: the master key, encrypted under a password with Argon2id.

A repository has one or more key files under ``keys/``. Each holds the same master
key, so a password can be added, changed or removed without re-encrypting data.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from strongroom.errors import IntegrityError
from strongroom.repository.codec import decode_as
from strongroom.repository.crypto import MasterKey


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The default takes 32 MiB, the memory restic's calibrated scrypt
    takes (N=2^15, r=8), with 6 passes: the same memory-time product as RFC 9106's
    second recommendation (64 MiB, 3 passes), at half the peak memory of a command.
    Each key file records its own parameters."""

    iterations: int = 6
    memory_kib: int = 32 * 1024
    lanes: int = 4


# Cheap parameters for test suites only; chosen explicitly, never by default.
TEST_KDF = KdfParams(iterations=1, memory_kib=8, lanes=1)


class _MasterDoc(msgspec.Struct):
    encryption_key: bytes
    id_key: bytes
    chunker_seed: int


@dataclass
class KeyFile:
    kdf: KdfParams
    salt: bytes
    data: bytes
    created: str = ""
    hostname: str = ""
    username: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "version": 1,
            "kdf": "argon2id",
            "iterations": self.kdf.iterations,
            "memory_kib": self.kdf.memory_kib,
            "lanes": self.kdf.lanes,
            "salt": base64.b64encode(self.salt).decode(),
            "data": base64.b64encode(self.data).decode(),
            "created": self.created,
            "hostname": self.hostname,
            "username": self.username,
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, what: str) -> KeyFile:
        try:
            doc = json.loads(raw)
            if doc["version"] != 1 or doc["kdf"] != "argon2id":
                raise ValueError("unknown key format")
            kdf = KdfParams(int(doc["iterations"]), int(doc["memory_kib"]), int(doc["lanes"]))
            if not (1 <= kdf.iterations <= 100 and 8 <= kdf.memory_kib <= 4 << 20):
                raise ValueError("KDF parameters out of range")
            if not (1 <= kdf.lanes <= 64):
                raise ValueError("KDF lanes out of range")
            return cls(
                kdf=kdf,
                salt=base64.b64decode(doc["salt"], validate=True),
                data=base64.b64decode(doc["data"], validate=True),
                created=str(doc.get("created", "")),
                hostname=str(doc.get("hostname", "")),
                username=str(doc.get("username", "")),
            )
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            raise IntegrityError(f"{what}: malformed key file ({type(e).__name__}: {e})") from None


# cryptography's Argon2id (lanes > 1) hangs when two threads derive at once (seen with
# cryptography 50 on Python 3.11): one derivation at a time per process.
_KDF_LOCK = threading.Lock()


def _derive(password: bytes, salt: bytes, kdf: KdfParams) -> AESGCM:
    with _KDF_LOCK:
        return _derive_unlocked(password, salt, kdf)


def _derive_unlocked(password: bytes, salt: bytes, kdf: KdfParams) -> AESGCM:
    key = Argon2id(
        salt=salt,
        length=32,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_cost=max(kdf.memory_kib, 8 * kdf.lanes),
    ).derive(password)
    return AESGCM(key)


def make_key_file(
    master: MasterKey, password: bytes, kdf: KdfParams, created: str, hostname: str, username: str
) -> KeyFile:
    salt = os.urandom(16)
    nonce = os.urandom(12)
    doc = msgspec.msgpack.encode(
        _MasterDoc(master.encryption_key, master.id_key, master.chunker_seed)
    )
    data = nonce + _derive(password, salt, kdf).encrypt(nonce, doc, b"strongroom key v1")
    return KeyFile(kdf, salt, data, created, hostname, username)


def open_key_file(key_file: KeyFile, password: bytes) -> MasterKey | None:
    """The master key, or None when the password does not open this key file."""
    if len(key_file.data) < 28 or len(key_file.salt) < 8:
        return None
    aead = _derive(password, key_file.salt, key_file.kdf)
    try:
        raw = aead.decrypt(key_file.data[:12], key_file.data[12:], b"strongroom key v1")
    except InvalidTag:
        return None
    doc = decode_as(raw, _MasterDoc, "key file", "master key")
    if len(doc.encryption_key) != 32 or len(doc.id_key) != 32:
        raise IntegrityError("key file holds keys of the wrong size")
    return MasterKey(doc.encryption_key, doc.id_key, doc.chunker_seed)
