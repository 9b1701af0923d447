"""R20: parsers never crash on hostile input.

Random bytes, mutations of valid encodings and well-formed documents of the wrong shape
go to every parser of repository data: pack headers (both the sealed header and a
hostile header inside a valid seal), index files (decoded and loaded into the chunk
index, as ``load_index`` does), trees, snapshots, key files, sealed objects, the config
(raw, and a hostile plaintext inside a valid seal) and zstd frames. Each either succeeds
or raises ``IntegrityError``: any other exception fails the test, as does an example
taking over a second. Memory is bounded: decompression bombs and huge declared lengths
are refused without allocating what they claim.

Each property runs a few hundred examples in the suite; the ``soak`` variants run tens
of thousands (scripts/soak.sh).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from strongroom.backend import LocalBackend, MemoryBackend
from strongroom.errors import IntegrityError
from strongroom.repository import DATA, TEST_KDF, TREE, Node, Repository, Snapshot, compression
from strongroom.repository.crypto import PackCipher, blob_id, seal, unseal
from strongroom.repository.index import ChunkIndex, decode_index, encode_index
from strongroom.repository.keys import KeyFile
from strongroom.repository.pack import (
    DATA_OFFSET,
    HEADER_AAD,
    PACK_MAGIC,
    TRAILER,
    PackEntry,
    cipher_for,
    open_blob,
    read_header,
)
from strongroom.repository.repository import CONFIG_MAGIC, RepoConfig
from strongroom.repository.snapshot import decode_snapshot, encode_snapshot
from strongroom.repository.tree import decode_tree, encode_tree
from tests.conftest import PASSWORD, cli
from tests.reliability.helpers import SOAK, soak_count, soak_only

SUITE_EXAMPLES = 150
SOAK_EXAMPLES = soak_count("fuzz_examples", 20_000)
COMMON: dict[str, Any] = {
    "deadline": 1000,  # milliseconds: no example may hang
    "database": None,
    "derandomize": not SOAK,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


# --- valid encodings to mutate ------------------------------------------------------------


class Corpus:
    def __init__(self) -> None:
        self.repo = Repository.init(
            MemoryBackend(), b"fuzz", kdf=TEST_KDF, created="c", hostname="h", username="u"
        )
        key = self.repo.master
        self.key = key
        tree_nodes = [
            Node(name=b"file", type="file", mode=0o644, size=5, content=[b"\x01" * 32, 7]),
            Node(name=b"dir", type="dir", subtree=b"\x02" * 32, xattrs=[(b"user.a", b"b")]),
            Node(name=b"link", type="symlink", target=b"../x"),
        ]
        self.tree = encode_tree(tree_nodes)
        writer = self.repo.new_pack_writer()
        writer.add(DATA, blob_id(key.id_key, b"hello"), b"hello")
        writer.add(TREE, blob_id(key.id_key, self.tree), self.tree)
        writer.add(DATA, blob_id(key.id_key, b"z" * 300), b"z" * 300)
        self.entries = list(writer.entries)
        _, pack = writer.finish()
        self.pack = bytes(pack)
        self.header = b"".join(
            bytes([e.type])
            + e.id
            + e.offset.to_bytes(4, "little")
            + e.length.to_bytes(4, "little")
            + e.raw_length.to_bytes(4, "little")
            + bytes([e.flags])
            for e in self.entries
        )
        self.index = encode_index({"a" * 64: self.entries, "b" * 64: self.entries[:1]})
        self.snapshot = encode_snapshot(
            Snapshot(time_ns=10**18, tree=b"\x03" * 32, paths=["/etc"], client="c", tags=["t"])
        )
        backend = self.repo.backend
        self.key_json = next(backend.load(i.name) for i in backend.list("keys/"))
        self.config_raw = backend.load("config")
        self.config_plain = unseal(key, b"config", self.config_raw[len(CONFIG_MAGIC) :], "c")
        self.sealed = [seal(key, b"snapshot", self.snapshot), seal(key, b"index", self.index)]
        self.zstd = compression.compress(b"abc" * 1000) or b""


@cache
def corpus() -> Corpus:
    return Corpus()


# --- strategies ---------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: Callable[[], list[bytes]]) -> bytes:
    """A valid encoding with a few random edits: bit flips, byte changes, boundary
    values, insertions, deletions, truncation, duplicated spans."""
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "byte", "edge", "insert", "delete", "cut", "dup")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "edge":
            edge = draw(
                st.sampled_from(
                    [
                        b"\xff",
                        b"\x00",
                        b"\x7f",
                        b"\x80",
                        b"\xff\xff\xff\xff",
                        b"\xcf" + b"\xff" * 8,
                        b"\xd3\x80" + b"\x00" * 7,
                        b"\xdd\xff\xff\xff\xff",
                        b"\xc6\x7f\xff\xff\xff",
                    ]
                )
            )
            data[pos : pos + len(edge)] = edge
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[pos:]
        elif op == "dup" and data:
            end = draw(st.integers(pos, len(data)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


FIELD_NAMES = [
    "nodes",
    "name",
    "type",
    "mode",
    "content",
    "subtree",
    "target",
    "xattrs",
    "size",
    "version",
    "packs",
    "time_ns",
    "tree",
    "paths",
    "client",
    "summary",
    "warnings",
    "id",
    "chunker_min",
    "chunker_avg",
    "chunker_max",
    "compression_level",
    "file",
    "dir",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=40)
    | st.text(max_size=12)
    | st.sampled_from(FIELD_NAMES)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=40,
)


def msgpack_documents() -> st.SearchStrategy[bytes]:
    return DOCUMENTS.map(msgspec.msgpack.encode)


WIDE_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.sampled_from(
    [0, 1, 15, 16, 255, 256, 2**24, 2**31, 2**32 - 1, 2**32, -1, -(2**31)]
)


@st.composite
def index_documents(draw: st.DrawFn) -> bytes:
    """Index files of the right shape with hostile numbers."""
    packs = []
    for _ in range(draw(st.integers(0, 3))):
        pack_id = draw(st.sampled_from(["a" * 64, "0" * 64]) | st.text(max_size=70))
        blobs = [
            [
                draw(WIDE_INTS),
                draw(st.binary(min_size=31, max_size=33)),
                draw(WIDE_INTS),
                draw(WIDE_INTS),
                draw(WIDE_INTS),
                draw(WIDE_INTS),
            ]
            for _ in range(draw(st.integers(0, 4)))
        ]
        packs.append([pack_id, blobs])
    return msgspec.msgpack.encode({"version": draw(st.sampled_from([1, 1, 2])), "packs": packs})


@st.composite
def key_documents(draw: st.DrawFn) -> bytes:
    """Key files of the right shape with hostile values, in JSON's extended grammar."""
    value = (
        st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=12)
        | st.booleans()
        | st.none()
        | st.lists(st.integers(), max_size=3)
    )
    doc: dict[str, Any] = {
        "version": 1,
        "kdf": "argon2id",
        "iterations": 1,
        "memory_kib": 8,
        "lanes": 1,
        "salt": "AAAAAAAAAAAAAAAAAAAAAA==",
        "data": "AAAA",
    }
    for name in draw(st.lists(st.sampled_from([*sorted(doc), "created", "hostname"]), max_size=4)):
        if draw(st.booleans()):
            doc[name] = draw(value)
        else:
            doc.pop(name, None)
    return json.dumps(doc).encode()


def inputs(seeds: Callable[[], list[bytes]], *extra: st.SearchStrategy[bytes]) -> Any:
    return st.one_of(st.binary(max_size=1024), mutated(seeds), *extra)


def fuzz(strategy: Any) -> Callable[[Callable[[bytes], None]], tuple[Any, Any]]:
    """A property in two sizes: the suite's, and a soak-only one."""

    def wrap(body: Callable[[bytes], None]) -> tuple[Any, Any]:
        def run(data: bytes) -> None:
            try:
                body(data)
            except IntegrityError:
                pass

        examples = getattr(body, "examples", [])

        def build(count: int) -> Any:
            def prop(data: bytes) -> None:
                run(data)

            prop.__name__ = body.__name__
            test = given(strategy)(prop)
            for ex in examples:
                test = example(ex)(test)
            return settings(max_examples=count, **COMMON)(test)

        return build(SUITE_EXAMPLES), soak_only(build(SOAK_EXAMPLES))

    return wrap


def with_examples(*examples: bytes) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def deco(body: Callable[[bytes], None]) -> Callable[[bytes], None]:
        body.examples = list(examples)  # type: ignore[attr-defined]
        return body

    return deco


# Deeper nesting than the interpreter's recursion limit (1000 under pytest), in a field
# the decoder would skip; and text that is not UTF-8 where a str is expected.
DEEP = b"\x91" * 2000 + b"\xc0"
DEEP_TREE = b"\x81\xa5nodes\x91\x83\xa4name\xc4\x01a\xa4type\xa4file\xa3zzz" + DEEP
BAD_UTF8_TREE = b"\x81\xa5nodes\x91\x82\xa4name\xc4\x01a\xa4type\xa4\xff\xfe\xfd\xfc"


# --- the parsers --------------------------------------------------------------------------


def _parse_pack(data: bytes) -> None:
    c = corpus()
    entries = read_header(c.key, data, "pack")
    (hlen,) = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    header_start = len(data) - TRAILER.size - hlen
    cipher = cipher_for(c.key, data, "pack")
    for e in entries:
        assert e.offset >= DATA_OFFSET and e.offset + e.length <= header_start, e
        open_blob(c.key, cipher, e, data[e.offset : e.offset + e.length], "blob")


test_pack, test_pack_soak = fuzz(inputs(lambda: [corpus().pack]))(_parse_pack)


def _pack_with_header(header: bytes) -> None:
    """A hostile header inside a valid seal: what someone with the key could write."""
    c = corpus()
    cipher = PackCipher(c.key)
    body = bytearray(PACK_MAGIC + cipher.salt)
    for e in c.entries:  # real blobs, so offsets in the header can point at them
        body += cipher.encrypt(bytes([e.type]) + e.id, b"x" * 5)
    sealed = cipher.encrypt(HEADER_AAD, header)
    _parse_pack(bytes(body + sealed + TRAILER.pack(len(sealed))))


test_pack_header, test_pack_header_soak = fuzz(
    st.one_of(st.binary(max_size=42 * 6), mutated(lambda: [corpus().header]))
)(_pack_with_header)


@with_examples(
    encode_index({"a" * 64: [PackEntry(DATA, b"\x01" * 32, -5, 10, 10, 0)]}),
    encode_index({"a" * 64: [PackEntry(DATA, b"\x02" * 32, 2**40, 10, 10, 0)]}),
    encode_index({"a" * 64: [PackEntry(DATA, b"\x03" * 32, 40, 10, -10, 0)]}),
    encode_index({"a" * 64: [PackEntry(-1, b"\x04" * 32, 40, 10, 10, 0)]}),
    b"\x82\xa7version\x01\xa5packs\x91\x92\xa2\xc3\x28\x90",  # a pack id not UTF-8
    b"\x82\xa7version\x01\xa3zzz" + DEEP,
)
def _load_index(plain: bytes) -> None:
    index = ChunkIndex(16)
    for pack_id, entry in decode_index(plain, "index"):
        index.add(pack_id, entry)


test_index, test_index_soak = fuzz(
    inputs(lambda: [corpus().index], index_documents(), msgpack_documents())
)(_load_index)


@with_examples(DEEP_TREE, BAD_UTF8_TREE)
def _parse_tree(plain: bytes) -> None:
    decode_tree(plain, "tree")


test_tree, test_tree_soak = fuzz(inputs(lambda: [corpus().tree], msgpack_documents()))(_parse_tree)


@with_examples(
    b"\x82\xa7time_ns\x01\xa5extra" + DEEP,
    b"\x83\xa7time_ns\x01\xa4tree\xc4\x20" + b"t" * 32 + b"\xa6client\xa2\xc3\x28",
)
def _parse_snapshot(plain: bytes) -> None:
    decode_snapshot(plain, "f" * 64)


test_snapshot, test_snapshot_soak = fuzz(inputs(lambda: [corpus().snapshot], msgpack_documents()))(
    _parse_snapshot
)


@with_examples(
    b"[" * 2000,
    b'{"version": 1, "kdf": "argon2id", "iterations": Infinity, "memory_kib": 8, '
    b'"lanes": 1, "salt": "", "data": ""}',
    b'{"version": 1, "kdf": "argon2id", "iterations": 1, "memory_kib": 1e999, '
    b'"lanes": 1, "salt": "", "data": ""}',
)
def _parse_key_file(raw: bytes) -> None:
    KeyFile.from_json(raw, "key")


test_key_file, test_key_file_soak = fuzz(inputs(lambda: [corpus().key_json], key_documents()))(
    _parse_key_file
)


def _unseal(raw: bytes) -> None:
    unseal(corpus().key, b"snapshot", raw, "object")


test_sealed_object, test_sealed_object_soak = fuzz(inputs(lambda: corpus().sealed))(_unseal)


def _read_config(raw: bytes) -> None:
    Repository._read_config(corpus().key, raw)


test_config, test_config_soak = fuzz(inputs(lambda: [corpus().config_raw]))(_read_config)


@with_examples(b"\x81\xa3zzz" + DEEP, b"\x81\xa2id\xa2\xc3\x28")
def _read_config_plaintext(plain: bytes) -> None:
    c = corpus()
    Repository._read_config(c.key, CONFIG_MAGIC + seal(c.key, b"config", plain))


test_config_plaintext, test_config_plaintext_soak = fuzz(
    inputs(lambda: [corpus().config_plain], msgpack_documents())
)(_read_config_plaintext)


def _decompress(data: bytes) -> None:
    # The expected size rides in the first bytes, so it is fuzzed along with the frame.
    size = int.from_bytes(data[:3], "little") if len(data) >= 3 else 0
    out = compression.decompress(data[3:], size, "blob")
    assert len(out) == size


test_decompress, test_decompress_soak = fuzz(
    inputs(lambda: [(3000).to_bytes(3, "little") + corpus().zstd])
)(_decompress)


def _decompress_reused(data: bytes) -> None:
    # The reused-buffer paths (checking a new blob, restoring, check --read-data).
    size = int.from_bytes(data[:3], "little") if len(data) >= 3 else 0
    if size <= compression.CHECK_BUFFER:
        out = compression.decompress_transient(data[3:], size, "blob")
        assert len(out) == size
    assert len(compression.decompressed_id(data[3:], size, bytes(32), "blob")) == 32


test_decompress_reused, test_decompress_reused_soak = fuzz(
    inputs(lambda: [(3000).to_bytes(3, "little") + corpus().zstd])
)(_decompress_reused)


# --- bounded memory -----------------------------------------------------------------------


def _peak(func: Callable[[], object]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    raised = None
    try:
        func()
    except BaseException as e:
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


def test_decompression_bomb_is_refused_without_inflating() -> None:
    bomb = compression.compress(bytes(256 << 20), 3)
    assert bomb is not None and len(bomb) < 64 << 10
    peak, raised = _peak(lambda: compression.decompress(bomb, 4096, "bomb"))
    assert isinstance(raised, IntegrityError), raised
    assert peak < 1 << 20, f"decompressing a bomb allocated {peak} bytes"


@pytest.mark.parametrize(
    "parse",
    [
        lambda d: decode_tree(d, "t"),
        lambda d: decode_snapshot(d, "f" * 64),
        lambda d: list(decode_index(d, "i")),
    ],
    ids=["tree", "snapshot", "index"],
)
@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\x81\xa5nodes\xdd\x7f\xff\xff\xff\xc0",
    ],
    ids=["array32", "map32", "bin32", "str32", "nodes-array32"],
)
def test_huge_declared_lengths_allocate_nothing(
    parse: Callable[[bytes], object], data: bytes
) -> None:
    peak, raised = _peak(lambda: parse(data))
    assert isinstance(raised, IntegrityError), raised
    assert peak < 1 << 20, f"a 5-byte input made the parser allocate {peak} bytes"


def test_pack_header_length_is_bounded() -> None:
    c = corpus()
    data = c.pack[:-4] + (2**32 - 1).to_bytes(4, "little")
    peak, raised = _peak(lambda: read_header(c.key, data, "pack"))
    assert isinstance(raised, IntegrityError), raised
    assert peak < 1 << 20


# --- a config that parses must be usable ------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"chunker_min": 0},
        {"chunker_min": 1 << 30, "chunker_avg": 1 << 31, "chunker_max": 1 << 32},
        {"chunker_avg": -1},
        {"compression_level": 1000},
    ],
    ids=["min-0", "huge", "negative", "compression-1000"],
)
def test_config_with_unusable_parameters_is_an_integrity_error(
    repo_path: Any, tmp_path: Any, change: dict[str, int]
) -> None:
    """Written by someone holding the key, but still hostile: the parser must refuse
    it (exit 13), not let a backup die later with an internal error."""
    repo = Repository.open(LocalBackend(repo_path), PASSWORD.encode())
    config = msgspec.structs.replace(repo.config, **change)
    raw = CONFIG_MAGIC + seal(repo.master, b"config", msgspec.msgpack.encode(config))
    assert isinstance(
        msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=RepoConfig), RepoConfig
    )
    (repo_path / "config").write_bytes(raw)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100_000)
    result = cli("--repo", str(repo_path), "backup", "--client", "c", str(src))
    assert result.code == 13, (result.code, result.stderr)
    assert "internal error" not in result.stderr
