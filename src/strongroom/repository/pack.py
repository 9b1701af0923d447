"""Pack files: many encrypted blobs in one object, with an encrypted header at the end.

Layout (format version 1):

    "SRP1" | salt (32) | blob ciphertext ... | header ciphertext | header length (u32 LE)

Each blob ciphertext is ``nonce(12) | AES-GCM(data) | tag(16)`` with associated data
``type byte | blob id``. The header lists, for each blob, ``type(1) id(32) offset(4)
length(4) raw_length(4) flags(1)``, and is sealed the same way with associated data
``b"packheader"``. The pack's storage name is the SHA-256 of all its bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TypeVar

from strongroom.backend import StagedObject
from strongroom.errors import IntegrityError
from strongroom.repository import compression
from strongroom.repository.crypto import (
    BLOB_OVERHEAD,
    SALT_SIZE,
    TAG_SIZE,
    MasterKey,
    PackCipher,
    blob_id,
)

PACK_MAGIC = b"SRP1"
DATA_OFFSET = len(PACK_MAGIC) + SALT_SIZE
ENTRY = struct.Struct("<B32sIIIB")
TRAILER = struct.Struct("<I")
HEADER_AAD = b"packheader"
MAX_HEADER = 64 * 1024 * 1024

DATA = 0
TREE = 1
BLOB_TYPES = {DATA: "data", TREE: "tree"}
FLAG_COMPRESSED = 1
# A pack being staged is written out in pieces of about this size.
WRITE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: int
    id: bytes
    offset: int
    length: int
    raw_length: int
    flags: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)


def blob_aad(blob_type: int, bid: bytes) -> bytes:
    return bytes([blob_type]) + bid


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackWriter:
    """Encrypts blobs into one pack, in memory or straight into a staged object."""

    def __init__(
        self, key: MasterKey, compression_level: int, sink: StagedObject | None = None
    ) -> None:
        self._level = compression_level
        self._cipher = PackCipher(key)
        self.sink = sink
        self._mem: bytearray | None = bytearray() if sink is None else None
        # For a sink: written in pieces of WRITE_SIZE, gathered in one buffer that is
        # filled in place (a bytearray grown by += is copied at each reallocation).
        self._unwritten = memoryview(bytearray(WRITE_SIZE)) if sink is not None else None
        self._filled = 0
        self._sealed = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self.entries: list[PackEntry] = []
        self._append(PACK_MAGIC + self._cipher.salt)

    @property
    def size(self) -> int:
        return self._size

    def _append(self, *parts: bytes | memoryview) -> None:
        for data in parts:
            self._hash.update(data)
            self._size += len(data)
            if self._mem is not None:
                self._mem += data
            elif len(data) >= WRITE_SIZE:  # written as it is, not copied to the buffer
                self._write_out()
                assert self.sink is not None
                self.sink.write(data)
            else:
                if self._filled + len(data) > WRITE_SIZE:
                    self._write_out()
                assert self._unwritten is not None
                self._unwritten[self._filled : self._filled + len(data)] = data
                self._filled += len(data)

    def _write_out(self) -> None:
        """Write what the buffer holds. Every sink copies or writes it before
        ``write`` returns, so the buffer can be filled again."""
        if self._filled:
            assert self.sink is not None and self._unwritten is not None
            filled, self._filled = self._filled, 0
            self.sink.write(self._unwritten[:filled])

    def add(
        self,
        blob_type: int,
        bid: bytes,
        data: bytes | memoryview,
        *,
        compressed: bytes | None = None,
        raw: bool = False,
    ) -> PackEntry:
        """Compress (when it pays), verify, encrypt and append one blob.

        ``compressed``: a zstd frame of ``data`` made elsewhere (by an agent, or by
        ``compress_blob`` ahead of time) and already verified; it is stored as it is.
        ``raw``: ``data`` is known not to compress; it is stored as it is.
        """
        if compressed is None and not raw:
            compressed = compress_blob(self._level, data)
        flags = 0 if compressed is None else FLAG_COMPRESSED
        payload: bytes | memoryview = data if compressed is None else compressed
        # Sealed into a buffer kept for the pack's life: a big blob's ciphertext is not
        # a new allocation each time (they fragment the heap).
        size = len(payload) + TAG_SIZE
        if len(self._sealed) < size:
            self._sealed = bytearray(size)
        ciphertext = memoryview(self._sealed)[:size]
        nonce = self._cipher.encrypt_into(blob_aad(blob_type, bid), payload, ciphertext)
        entry = PackEntry(blob_type, bid, self._size, len(nonce) + size, len(data), flags)
        self._append(nonce, ciphertext)
        ciphertext.release()
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[str, bytearray | None]:
        """Seal the header. Returns the pack id and, for an in-memory pack, its bytes."""
        header = b"".join(
            ENTRY.pack(e.type, e.id, e.offset, e.length, e.raw_length, e.flags)
            for e in self.entries
        )
        sealed = self._cipher.encrypt(HEADER_AAD, header)
        self._append(sealed, TRAILER.pack(len(sealed)))
        self._write_out()
        mem, self._mem = self._mem, None
        self._release()
        return self._hash.hexdigest(), mem

    def discard(self) -> None:
        self._mem = None
        self._release()
        if self.sink is not None:
            self.sink.discard()

    def _release(self) -> None:
        """Let go of the buffers once the pack is done: a writer can outlive its pack
        (a thread's reference, a sink not yet collected), and a director running many
        sessions at once kept hundreds of finished writers' 1 MiB buffers alive."""
        self._unwritten = None
        self._sealed = bytearray()


def compress_blob(level: int, data: bytes | memoryview) -> bytes | None:
    """A blob's zstd frame, checked to decompress to ``data`` (a compressor bug must
    not corrupt a backup), or None when compression does not pay."""
    packed = compression.compress(data, level) if len(data) > 64 else None
    if packed is None:
        return None
    if not compression.decompresses_to(packed, data):
        raise IntegrityError("compression round trip failed; refusing to store")
    return packed


def cipher_for(key: MasterKey, pack_start: bytes | memoryview, what: str) -> PackCipher:
    if len(pack_start) < DATA_OFFSET or pack_start[: len(PACK_MAGIC)] != PACK_MAGIC:
        raise IntegrityError(f"{what}: not a pack (damaged or truncated)")
    return PackCipher(key, salt=bytes(pack_start[len(PACK_MAGIC) : DATA_OFFSET]))


def read_header(key: MasterKey, data: bytes, what: str) -> list[PackEntry]:
    """Parse and authenticate a whole pack's header; IntegrityError on any damage."""
    start, hlen = header_span(len(data), data[-TRAILER.size :], what)
    return parse_header(key, data[:DATA_OFFSET], data[start : start + hlen], start, what)


def header_span(size: int, trailer: bytes | memoryview, what: str) -> tuple[int, int]:
    """Where a pack of ``size`` bytes keeps its header (start, length), from its last
    TRAILER.size bytes; IntegrityError when that is impossible."""
    if size < DATA_OFFSET + TRAILER.size + BLOB_OVERHEAD:
        raise IntegrityError(f"{what}: truncated ({size} bytes)")
    (hlen,) = TRAILER.unpack(trailer)
    start = size - TRAILER.size - hlen
    if hlen > MAX_HEADER or start < DATA_OFFSET:
        raise IntegrityError(f"{what}: header length {hlen} is impossible")
    return start, hlen


def parse_header(
    key: MasterKey,
    pack_start: bytes | memoryview,
    sealed: bytes | memoryview,
    start: int,
    what: str,
) -> list[PackEntry]:
    """Authenticate and parse a pack's header (``sealed``, found at ``start``), given
    the pack's first DATA_OFFSET bytes (its salt)."""
    cipher = cipher_for(key, pack_start, what)
    header = cipher.decrypt(HEADER_AAD, sealed, f"{what} header")
    if len(header) % ENTRY.size:
        raise IntegrityError(f"{what}: header has a partial entry")
    entries = []
    for fields in ENTRY.iter_unpack(header):
        entry = PackEntry(*fields)
        if entry.offset < DATA_OFFSET or entry.offset + entry.length > start:
            raise IntegrityError(f"{what}: entry points outside the pack")
        entries.append(entry)
    return entries


def open_blob(
    key: MasterKey, cipher: PackCipher, entry: PackEntry, ciphertext: bytes | memoryview, what: str
) -> bytes:
    """Decrypt, decompress and verify one blob against its keyed id."""
    plain = cipher.decrypt(blob_aad(entry.type, entry.id), ciphertext, what)
    return open_plain(key, entry, plain, what)


def open_blob_transient(
    key: MasterKey, cipher: PackCipher, entry: PackEntry, ciphertext: bytes | memoryview, what: str
) -> bytes | memoryview:
    """``open_blob``, but a compressed blob's content may be a view of a buffer this
    thread reuses, valid until its next call here (for content written out at once).
    The plaintext goes to a reused buffer too: fresh ones cost page faults."""
    plain = cipher.decrypt_into(
        blob_aad(entry.type, entry.id),
        ciphertext,
        compression.thread_buffer("plaintext", len(ciphertext)),
        what,
    )
    content: bytes | memoryview
    if entry.compressed and entry.raw_length <= compression.CHECK_BUFFER:
        content = compression.decompress_transient(plain, entry.raw_length, what)
    else:
        content = _content(entry, plain, what)
    _check_id(key, entry, content, what)
    return content


def open_plain(key: MasterKey, entry: PackEntry, plain: bytes, what: str) -> bytes:
    """A decrypted blob's content, decompressed and checked against its id."""
    content = _content(entry, plain, what)
    _check_id(key, entry, content, what)
    return content


_Plain = TypeVar("_Plain", bytes, memoryview)


def _content(entry: PackEntry, plain: _Plain, what: str) -> _Plain | bytes:
    """A decrypted blob's content: decompressed, or checked to have its length."""
    if entry.compressed:
        return compression.decompress(plain, entry.raw_length, what)
    if len(plain) != entry.raw_length:
        raise IntegrityError(f"{what}: length {len(plain)} does not match the index")
    return plain


def _check_id(key: MasterKey, entry: PackEntry, content: bytes | memoryview, what: str) -> None:
    if blob_id(key.id_key, content) != entry.id:
        raise IntegrityError(f"{what}: content does not match its id")


def verify_blob(
    key: MasterKey, cipher: PackCipher, entry: PackEntry, ciphertext: bytes | memoryview, what: str
) -> None:
    """What ``open_blob`` checks (authenticity, length, id), keeping no plaintext: a
    compressed blob is decompressed into a reused buffer and hashed there."""
    plain = cipher.decrypt(blob_aad(entry.type, entry.id), ciphertext, what)
    if not entry.compressed:
        open_plain(key, entry, plain, what)
    elif compression.decompressed_id(plain, entry.raw_length, key.id_key, what) != entry.id:
        raise IntegrityError(f"{what}: content does not match its id")
