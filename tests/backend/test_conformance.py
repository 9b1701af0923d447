"""One contract, every backend: the same suite against local, memory, a fault wrapper,
S3 (a real ``rclone serve s3``), and S3 retried through a proxy injecting faults (R10).

Plus what only the local backend can show (a failed save leaves nothing behind) and
that the fault wrapper's faults do what they say.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strongroom.backend import (
    Backend,
    BackendError,
    LocalBackend,
    MemoryBackend,
    NoSpace,
    ObjectNotFound,
    PermanentError,
    TransientError,
    load_into,
)
from strongroom.backend.faults import FaultyBackend
from strongroom.backend.local import TEMP_PREFIX
from strongroom.backend.retry import RetryingBackend
from strongroom.errors import EXIT_FATAL, StorageFull
from tests.backend.conftest import S3Server
from tests.backend.s3proxy import FaultProxy

Factory = Callable[[Path, pytest.FixtureRequest], Backend]


def _s3(request: pytest.FixtureRequest) -> Backend:
    """A fresh bucket, under a prefix, on the session's rclone server."""
    server: S3Server = request.getfixturevalue("s3_server")
    return server.backend(server.new_bucket(), "repo/one", list_page_size=4)


def _s3_through_faults(request: pytest.FixtureRequest) -> Backend:
    """S3 as ``open_backend`` gives it (retried), through a proxy that faults a fifth of
    all distinct requests: errors, resets, stalls, lost and truncated answers."""
    server: S3Server = request.getfixturevalue("s3_server")
    proxy: FaultProxy = request.getfixturevalue("proxy")
    proxy.stall_s = 2.0
    proxy.inject(0.2, seed=len(request.node.name))
    inner = server.backend(
        server.new_bucket(), "repo", endpoint=proxy.endpoint, list_page_size=3, read_timeout=1.0
    )
    return RetryingBackend(inner, attempts=6, base_delay=0.005, max_delay=0.05)


FACTORIES: dict[str, Factory] = {
    "local": lambda p, r: LocalBackend(p / "store"),
    "memory": lambda p, r: MemoryBackend("memory:test"),
    "faulty-local": lambda p, r: FaultyBackend(LocalBackend(p / "store")),
    "s3": lambda p, r: _s3(r),
    "s3-through-faults": lambda p, r: _s3_through_faults(r),
}


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = FACTORIES[request.param](tmp_path, request)
    b.create()
    yield b
    b.close()


@pytest.fixture(params=sorted(FACTORIES))
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend whose root has not been created."""
    b = FACTORIES[request.param](tmp_path, request)
    yield b
    b.close()


def names(b: Backend, prefix: str = "") -> list[str]:
    return [info.name for info in b.list(prefix)]


# --- create / exists ----------------------------------------------------------------


def test_create_makes_it_exist(fresh: Backend) -> None:
    assert not fresh.exists()
    fresh.create()
    assert fresh.exists()
    fresh.create()  # idempotent
    assert fresh.exists()
    assert names(fresh) == []


# --- save / load / stat ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"x", bytes(range(256)) * 100, os.urandom(1 << 20)],
    ids=["empty", "one-byte", "25KiB", "1MiB"],
)
def test_save_load_round_trip(backend: Backend, data: bytes) -> None:
    backend.save("data/ab/abcdef", data)
    assert backend.load("data/ab/abcdef") == data
    info = backend.stat("data/ab/abcdef")
    assert info.name == "data/ab/abcdef"
    assert info.size == len(data)
    assert info.mtime > 0


def test_save_accepts_bytearray_and_memoryview(backend: Backend) -> None:
    backend.save("a", bytearray(b"bytearray"))
    backend.save("b", memoryview(b"..memoryview..")[2:-2])
    assert backend.load("a") == b"bytearray"
    assert backend.load("b") == b"memoryview"


def test_range_loads(backend: Backend) -> None:
    data = bytes(range(256)) * 4
    backend.save("obj", data)
    assert backend.load("obj", 0, 10) == data[:10]
    assert backend.load("obj", 100, 50) == data[100:150]
    assert backend.load("obj", len(data) - 7, 7) == data[-7:]
    assert backend.load("obj", len(data), 0) == b""
    assert backend.load("obj", 0, len(data)) == data
    assert backend.load("obj", 1000) == data[1000:]
    assert backend.load("obj", 0, None) == data


@pytest.mark.parametrize(("offset", "length"), [(0, 1025), (1000, 25), (1024, 1), (2000, 5)])
def test_short_range_read_raises(backend: Backend, offset: int, length: int) -> None:
    backend.save("obj", bytes(1024))
    with pytest.raises(BackendError):
        backend.load("obj", offset, length)


def test_range_loads_into_a_buffer(backend: Backend) -> None:
    """``load_into`` (the backend's own where it has one) fills exactly the view given."""
    data = bytes(range(256)) * 4
    backend.save("obj", data)
    buffer = bytearray(b"\xee" * 64)
    view = memoryview(buffer)
    load_into(backend, "obj", 100, view[8:58])
    assert buffer[8:58] == data[100:150]
    assert buffer[:8] == b"\xee" * 8 and buffer[58:] == b"\xee" * 6
    load_into(backend, "obj", len(data) - 7, view[:7])
    assert buffer[:7] == data[-7:]


@pytest.mark.parametrize(("offset", "length"), [(0, 1025), (1000, 25), (2000, 5)])
def test_short_or_missing_load_into_raises(backend: Backend, offset: int, length: int) -> None:
    backend.save("obj", bytes(1024))
    with pytest.raises(BackendError):
        load_into(backend, "obj", offset, memoryview(bytearray(length)))
    with pytest.raises(ObjectNotFound):
        load_into(backend, "absent", 0, memoryview(bytearray(4)))


def test_overwrite_replaces_the_object(backend: Backend) -> None:
    backend.save("snapshots/x", b"first version, longer")
    backend.save("snapshots/x", b"second")
    assert backend.load("snapshots/x") == b"second"
    assert backend.stat("snapshots/x").size == 6
    assert names(backend) == ["snapshots/x"]


# --- not found ------------------------------------------------------------------------


def test_missing_objects_raise_object_not_found(backend: Backend) -> None:
    backend.save("data/ab/present", b"x")
    for name in ("absent", "data/ab/absent", "nodir/absent"):
        with pytest.raises(ObjectNotFound):
            backend.load(name)
        with pytest.raises(ObjectNotFound):
            backend.load(name, 0, 1)
        with pytest.raises(ObjectNotFound):
            backend.stat(name)
        with pytest.raises(ObjectNotFound):
            backend.remove(name)


def test_a_prefix_of_other_names_is_not_an_object(backend: Backend) -> None:
    """'data' and 'data/ab' are where objects live, not objects: not found, like S3."""
    backend.save("data/ab/abcdef", b"x")
    wrong = []
    for name in ("data", "data/ab"):
        for verb, call in (
            ("load", backend.load),
            ("stat", backend.stat),
            ("remove", backend.remove),
        ):
            try:
                result = call(name)
            except ObjectNotFound:
                continue
            except Exception as e:
                wrong.append(f"{verb}({name!r}) raised {type(e).__name__}: {e}")
            else:
                wrong.append(f"{verb}({name!r}) returned {result!r}")
    assert wrong == []
    assert backend.load("data/ab/abcdef") == b"x"


def test_object_not_found_is_a_storage_error_with_its_exit_code(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound) as info:
        backend.load("absent")
    assert isinstance(info.value, BackendError)
    assert info.value.exit_code == 10


# --- remove ---------------------------------------------------------------------------


def test_remove(backend: Backend) -> None:
    backend.save("keys/a", b"a")
    backend.save("keys/b", b"b")
    backend.remove("keys/a")
    assert names(backend, "keys/") == ["keys/b"]
    with pytest.raises(ObjectNotFound):
        backend.load("keys/a")
    with pytest.raises(ObjectNotFound):
        backend.remove("keys/a")
    backend.save("keys/a", b"again")
    assert backend.load("keys/a") == b"again"


# --- list -----------------------------------------------------------------------------

LAYOUT = {
    "config": b"c",
    "data/00/00aa": b"1",
    "data/00/00bb": b"22",
    "data/ab/ab01": b"333",
    "data/ff/ffee": b"4444",
    "index/0123": b"i",
    "index/4567": b"ii",
    "keys/k1": b"k",
    "snapshots/s1": b"s",
    "snapshots/s2": b"ss",
    # names that sort around '/': '-' < '/' < '0' < 'z'
    "a-b": b"dash",
    "a/b": b"slash",
    "a0": b"zero",
    "z": b"last",
}


@pytest.fixture
def filled(backend: Backend) -> Backend:
    for name, data in LAYOUT.items():
        backend.save(name, data)
    return backend


def test_list_everything_sorted_and_complete(filled: Backend) -> None:
    infos = list(filled.list(""))
    assert [i.name for i in infos] == sorted(LAYOUT)
    assert {i.name: i.size for i in infos} == {n: len(d) for n, d in LAYOUT.items()}


@pytest.mark.parametrize("prefix", ["data/", "data/00/", "index/", "keys/", "snapshots/", "a/"])
def test_list_directory_prefixes(filled: Backend, prefix: str) -> None:
    assert names(filled, prefix) == sorted(n for n in LAYOUT if n.startswith(prefix))


PARTIAL_PREFIXES = ["data/a", "data/00/00a", "snap", "a", "index/4", "con"]


def test_list_partial_name_prefixes(filled: Backend) -> None:
    """The protocol: every object whose name starts with ``prefix`` (not only dirs)."""
    wrong = {}
    for prefix in PARTIAL_PREFIXES:
        got = names(filled, prefix)
        expected = sorted(n for n in LAYOUT if n.startswith(prefix))
        if got != expected:
            wrong[prefix] = (got, expected)
    assert wrong == {}


def test_list_of_an_absent_prefix_is_empty(filled: Backend) -> None:
    assert names(filled, "locks/") == []
    assert names(filled, "nothing") == []


def test_list_reports_current_sizes(filled: Backend) -> None:
    filled.save("keys/k1", b"a longer key now")
    assert {i.name: i.size for i in filled.list("keys/")} == {"keys/k1": 16}


# --- names ----------------------------------------------------------------------------

INVALID_NAMES = [
    "",
    "..",
    ".",
    "../escape",
    "data/../../escape",
    "data/./x",
    "/etc/passwd",
    "/abs",
    "data//x",
    "data/",
    "nul\0name",
]


def test_invalid_names_are_rejected_by_every_verb(backend: Backend) -> None:
    """PermanentError from every verb: an invalid name is a bug, never 'not found'."""
    verbs: dict[str, Callable[[str], object]] = {
        "save": lambda n: backend.save(n, b"x"),
        "load": backend.load,
        "load-range": lambda n: backend.load(n, 0, 1),
        "stat": backend.stat,
        "remove": backend.remove,
    }
    wrong = []
    for name in INVALID_NAMES:
        for verb, call in verbs.items():
            try:
                call(name)
            except PermanentError:
                continue
            except Exception as e:
                wrong.append(f"{verb}({name!r}) raised {type(e).__name__}")
            else:
                wrong.append(f"{verb}({name!r}) succeeded")
    assert wrong == []
    assert names(backend) == []


def test_invalid_names_never_touch_anything_outside_a_local_root(tmp_path: Path) -> None:
    (tmp_path / "escape").write_bytes(b"outside")
    b = LocalBackend(tmp_path / "store")
    b.create()
    for name in ("../escape", "/" + str(tmp_path / "escape").lstrip("/")):
        with pytest.raises(PermanentError):
            b.save(name, b"overwritten")
        with pytest.raises(PermanentError):
            b.remove(name)
    assert (tmp_path / "escape").read_bytes() == b"outside"


# --- local only -----------------------------------------------------------------------


def test_local_list_ignores_temp_files(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "store")
    b.create()
    b.save("data/ab/ab12", b"real")
    (tmp_path / "store" / "data" / "ab" / f"{TEMP_PREFIX}ab34-0000").write_bytes(b"")
    (tmp_path / "store" / f"{TEMP_PREFIX}config-1111").write_bytes(b"half")
    assert names(b) == ["data/ab/ab12"]
    assert names(b, "data/") == ["data/ab/ab12"]


def test_local_save_leaves_no_temp_file(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "store")
    b.create()
    for i in range(5):
        b.save(f"data/0{i}/obj", b"x" * i)
    leftovers = [p for p in (tmp_path / "store").rglob(f"{TEMP_PREFIX}*")]
    assert leftovers == []


def test_local_list_of_a_missing_root_is_an_error_not_empty(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "never-created")
    with pytest.raises(BackendError):
        list(b.list(""))
    with pytest.raises(BackendError):
        list(b.list("snapshots/"))


def test_local_files_are_private(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "store")
    b.create()
    b.save("keys/k", b"secret")
    assert (tmp_path / "store" / "keys" / "k").stat().st_mode & 0o077 == 0


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs; skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.mark.root
def test_local_save_on_a_full_disk_leaves_nothing(tiny_mount: Path) -> None:
    b = LocalBackend(tiny_mount / "repo")
    b.create()
    b.save("config", b"small and important")
    with pytest.raises(NoSpace) as info:
        b.save("data/ab/big", os.urandom(1 << 20))
    assert isinstance(info.value, StorageFull)
    assert info.value.exit_code == EXIT_FATAL
    assert "space" in str(info.value)
    # nothing under the final name, no temp file
    assert _all_files(tiny_mount / "repo") == ["config"]
    with pytest.raises(ObjectNotFound):
        b.stat("data/ab/big")
    # an overwrite that fails keeps the old object whole
    with pytest.raises(NoSpace):
        b.save("config", os.urandom(1 << 20))
    assert b.load("config") == b"small and important"
    assert _all_files(tiny_mount / "repo") == ["config"]
    # and once there is room again, saving works
    b.save("data/ab/small", b"fits")
    assert b.load("data/ab/small") == b"fits"


@pytest.mark.root
def test_local_save_on_a_read_only_filesystem_leaves_nothing(tiny_mount: Path) -> None:
    b = LocalBackend(tiny_mount / "repo")
    b.create()
    b.save("data/ab/existing", b"x")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    with pytest.raises(PermanentError):
        b.save("data/ab/new", b"y")
    with pytest.raises(PermanentError):
        b.save("snapshots/new", b"y")  # a directory that does not exist yet
    with pytest.raises(PermanentError):
        b.remove("data/ab/existing")
    assert _all_files(tiny_mount / "repo") == ["data/ab/existing"]


# --- the fault wrapper ------------------------------------------------------------------


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[FaultyBackend]:
    b = FaultyBackend(LocalBackend(tmp_path / "store"))
    b.create()
    yield b
    b.close()


def test_fail_saves_after(faulty: FaultyBackend) -> None:
    faulty.fail_saves_after(2, NoSpace("full"))
    faulty.save("a", b"1")
    faulty.save("b", b"2")
    for name in ("c", "a"):
        with pytest.raises(NoSpace):
            faulty.save(name, b"3")
    assert names(faulty) == ["a", "b"]
    assert faulty.load("a") == b"1"
    assert faulty.saved == ["a", "b"]
    faulty.heal()
    faulty.save("c", b"3")
    assert names(faulty) == ["a", "b", "c"]


def test_fail_loads_and_lists(faulty: FaultyBackend) -> None:
    faulty.save("keys/k", b"key")
    faulty.fail_loads(TransientError("reset"))
    with pytest.raises(TransientError):
        faulty.load("keys/k")
    assert faulty.stat("keys/k").size == 3
    faulty.fail_lists(PermanentError("forbidden"))
    with pytest.raises(PermanentError):
        list(faulty.list("keys/"))
    faulty.heal()
    assert faulty.load("keys/k") == b"key"
    assert names(faulty, "keys/") == ["keys/k"]


def test_corrupt_loads_of_a_prefix(faulty: FaultyBackend) -> None:
    faulty.save("data/ab/pack", b"\x10pack bytes")
    faulty.save("index/i", b"\x10index bytes")
    faulty.corrupt_loads_of("data/")
    assert faulty.load("data/ab/pack") == b"\x11pack bytes"
    assert faulty.load("data/ab/pack", 0, 2) == b"\x11p"
    assert faulty.load("index/i") == b"\x10index bytes"
    assert faulty.inner.load("data/ab/pack") == b"\x10pack bytes"  # stored bytes intact
    faulty.heal()
    assert faulty.load("data/ab/pack") == b"\x10pack bytes"


def test_on_save_sees_every_successful_save(faulty: FaultyBackend) -> None:
    seen: list[str] = []
    faulty.on_save(seen.append)
    faulty.save("a", b"1")
    faulty.fail_saves_after(0, TransientError("down"))
    with pytest.raises(TransientError):
        faulty.save("b", b"2")
    assert seen == ["a"]


def test_on_save_runs_after_the_object_is_stored(faulty: FaultyBackend) -> None:
    observed: list[bytes] = []
    faulty.on_save(lambda name: observed.append(faulty.inner.load(name)))
    faulty.save("snapshots/s", b"stored")
    assert observed == [b"stored"]
