"""The S3 backend against a real server (rclone), and R10: storage hiccups are survived.

The conformance suite (test_conformance.py) covers the verbs; here: URLs, multipart and
staged uploads, what reaches the disk, ranged reads that come back cut or whole, error
mapping, bounded retries through a fault proxy, object lock, secrets, and the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from strongroom.backend import NoSpace, ObjectNotFound, PermanentError, TransientError, open_backend
from strongroom.backend.retry import RetryingBackend
from strongroom.backend.s3 import S3Backend, S3Location, translate
from strongroom.clock import FakeClock
from strongroom.errors import EXIT_FATAL, UsageError
from tests.backend.conftest import ACCESS_KEY, SECRET_KEY, S3Server
from tests.backend.s3proxy import RANDOM_KINDS, FaultProxy, Seen
from tests.conftest import cli, cli_subprocess

KiB = 1024


def retrying(backend: S3Backend, attempts: int = 4) -> tuple[RetryingBackend, list[float]]:
    """The backend retried as ``open_backend`` does, with its sleeps recorded, not slept."""
    sleeps: list[float] = []
    return RetryingBackend(backend, attempts=attempts, sleep=sleeps.append), sleeps


def is_get(seen: Seen) -> bool:
    return seen.method == "GET" and not seen.is_listing


# --- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", S3Location("bucket")),
        ("s3://bucket/", S3Location("bucket")),
        ("s3://bucket/a/b/", S3Location("bucket", "a/b/")),
        (
            "s3://b/p?endpoint=http://127.0.0.1:9000&region=eu-west-1",
            S3Location("b", "p/", "http://127.0.0.1:9000", "eu-west-1"),
        ),
        (
            "s3://b/p?object_lock_days=30&object_lock_mode=compliance",
            S3Location("b", "p/", object_lock_days=30, object_lock_mode="COMPLIANCE"),
        ),
    ],
)
def test_url_parsing(url: str, expected: S3Location) -> None:
    assert S3Location.parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/p?unknown=1",
        "s3://bucket/p?region=a&region=b",
        "s3://bucket/p?endpoint=ftp://host",
        "s3://bucket/p?object_lock_days=0",
        "s3://bucket/p?object_lock_days=x",
        "s3://bucket/p?object_lock_mode=GOVERNANCE",
        "s3://bucket/p?object_lock_days=3&object_lock_mode=forever",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        S3Location.parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE:TOPSECRET-URL@bucket/p",
        "s3://bucket/p?endpoint=http://AKIAEXAMPLE:TOPSECRET-URL@127.0.0.1:9000",
    ],
)
def test_credentials_in_a_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(UsageError) as info:
        S3Location.parse(url)
    assert "TOPSECRET" not in str(info.value) + info.value.hint


def test_open_backend_gives_a_retried_s3_backend_with_a_clean_location(
    aws_env: S3Server,
) -> None:
    backend = open_backend("s3://bucket/vault/?endpoint=http://127.0.0.1:9/&region=eu-west-1")
    assert isinstance(backend, RetryingBackend)
    assert isinstance(backend.inner, S3Backend)
    assert backend.location == "s3://bucket/vault?endpoint=http://127.0.0.1:9"
    assert SECRET_KEY not in repr(backend) + repr(backend.inner) + backend.location


def test_boto3_is_not_imported_for_help_or_local_repositories(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from strongroom.cli.main import run\n"
        "from strongroom.backend import open_backend\n"
        "assert run(['--help']) == 0\n"
        "for command in ('init', 'backup', 'restore', 'check', 'snapshots', 'run', 'catalog'):\n"
        "    assert run([command, '--help']) == 0, command\n"
        f"open_backend({str(tmp_path / 'repo')!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "[]"


# --- error mapping ----------------------------------------------------------------------


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    answer: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, "GetObject")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),
        ("NoSuchBucket", 404, ObjectNotFound),
        ("AccessDenied", 403, PermanentError),
        ("InvalidAccessKeyId", 403, PermanentError),
        ("SignatureDoesNotMatch", 403, PermanentError),
        ("403", 403, PermanentError),
        ("QuotaExceeded", 403, NoSpace),
        ("XMinioStorageFull", 507, NoSpace),
        ("InvalidArgument", 400, PermanentError),
        ("InternalError", 500, TransientError),
        ("ServiceUnavailable", 503, TransientError),
        ("SlowDown", 503, TransientError),
        ("RequestTimeout", 400, TransientError),
        ("BadDigest", 400, TransientError),
        ("TooManyRequests", 429, TransientError),
    ],
)
def test_error_mapping(code: str, status: int, kind: type[Exception]) -> None:
    assert isinstance(translate(_client_error(code, status), "loading x"), kind)


def test_quota_is_both_full_and_permanent() -> None:
    err = translate(_client_error("QuotaExceeded", 403), "saving x")
    assert isinstance(err, NoSpace) and isinstance(err, PermanentError)
    assert "quota" in str(err) and err.exit_code == EXIT_FATAL


# --- writing: what reaches the disk -------------------------------------------------------


def test_multipart_upload_stores_identical_bytes(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(
        bucket, "vault", endpoint=proxy.endpoint, multipart_threshold=64 * KiB, part_size=20 * KiB
    )
    b.create()
    data = os.urandom(150 * KiB)
    b.save("data/ab/big", data)
    b.save("data/ab/small", data[: 64 * KiB - 1])
    assert s3_server.stored(bucket, "vault/data/ab/big") == data
    assert s3_server.stored(bucket, "vault/data/ab/small") == data[: 64 * KiB - 1]
    parts = proxy.count(lambda s: s.method == "PUT" and "partNumber=" in s.path)
    assert parts == 8  # 150 KiB in 20 KiB parts; the small one went in a single PUT
    assert proxy.count(lambda s: s.method == "POST" and s.path.endswith("?uploads")) == 1
    assert b.load("data/ab/big") == data


def test_a_staged_object_is_invisible_until_published(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    small_parts = s3_server.backend(bucket, "v", multipart_threshold=64 * KiB, part_size=16 * KiB)
    default = s3_server.backend(bucket, "v")
    default.create()
    cases = [
        (default, 10),  # one PUT, spooled in memory
        (default, 2048 * KiB),  # one PUT, spooled to a temporary file
        (small_parts, 100 * KiB),  # multipart, from memory
        (small_parts, 1280 * KiB),  # multipart, from a temporary file
    ]
    for b, size in cases:
        data = os.urandom(size)
        staged = b.stage("data/")
        for i in range(0, size, 7777):
            staged.write(memoryview(data)[i : i + 7777])
        assert [i.name for i in b.list("")] == []
        staged.publish(f"data/{size}")
        assert s3_server.stored(bucket, f"v/data/{size}") == data
        b.remove(f"data/{size}")
    staged = default.stage("data/")
    staged.write(b"abandoned")
    staged.discard()
    with pytest.raises(PermanentError):
        staged.publish("data/abandoned")
    assert [i.name for i in default.list("")] == []
    assert s3_server.stored_keys(bucket) == []


def test_a_failed_publish_keeps_its_data_and_can_be_published_again(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    data = os.urandom(300 * KiB)
    staged = b.stage("data/")
    staged.write(data)
    proxy.always("reset", lambda s: s.method == "PUT", times=1)
    with pytest.raises(TransientError):
        staged.publish("data/pack")
    with pytest.raises(ObjectNotFound):
        b.stat("data/pack")
    staged.publish("data/pack")
    assert s3_server.stored(bucket, "data/pack") == data


@pytest.mark.parametrize("fault", ["403", "reset", "500"])
def test_a_failed_multipart_upload_is_aborted_and_leaves_the_old_object(
    s3_server: S3Server, proxy: FaultProxy, fault: str
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(
        bucket, endpoint=proxy.endpoint, multipart_threshold=32 * KiB, part_size=16 * KiB
    )
    b.create()
    old, new = os.urandom(40 * KiB), os.urandom(80 * KiB)
    b.save("index/i", old)
    proxy.always(fault, lambda s: "partNumber=3" in s.path)
    kind = PermanentError if fault == "403" else TransientError
    with pytest.raises(kind):
        b.save("index/i", new)
    with pytest.raises(kind):
        b.save("snapshots/new", new)
    aborts = proxy.count(lambda s: s.method == "DELETE" and "uploadId=" in s.path)
    assert aborts == 2
    assert b.load("index/i") == old
    assert [i.name for i in b.list("")] == ["index/i"]
    assert s3_server.stored_keys(bucket) == ["index/i"]  # no parts left behind


# --- reading: cut, whole and short answers -----------------------------------------------


def test_a_truncated_answer_is_an_error_never_data(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    data = os.urandom(10 * KiB)
    b.save("data/p", data)
    for fault in ("truncate", "short"):
        for offset, length in ((0, None), (100, 5000), (3000, None)):
            proxy.always(fault, is_get, times=1)
            with pytest.raises(TransientError):
                b.load("data/p", offset, length)
    r, sleeps = retrying(b)
    proxy.always("truncate", is_get, times=1)
    assert r.load("data/p", 100, 5000) == data[100:5100]
    proxy.always("short", is_get, times=1)
    assert r.load("data/p") == data
    assert r.retries == len(sleeps) == 2


def test_a_server_that_ignores_range_is_sliced(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    data = os.urandom(1000)
    b.save("data/p", data)
    proxy.always("ignore-range", is_get)
    assert b.load("data/p", 100, 50) == data[100:150]
    assert b.load("data/p", 500) == data[500:]
    assert b.load("data/p") == data
    with pytest.raises(ObjectNotFound):
        b.load("data/p", 990, 20)
    assert proxy.faults() == {"ignore-range": 4}


# --- R10: bounded retries, fast permanent errors, listings ----------------------------------


def test_retries_are_bounded_and_counted(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    b.save("data/p", b"pack")
    proxy.always("503", is_get)
    r, sleeps = retrying(b, attempts=5)
    with pytest.raises(TransientError, match="gave up after 5 attempts"):
        r.load("data/p")
    assert proxy.count(is_get) == 5  # boto3 itself retried nothing
    assert r.retries == len(sleeps) == 4
    caps = [0.5, 1.0, 2.0, 4.0]
    assert all(cap / 2 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


@pytest.mark.parametrize(("fault", "kind"), [("403", PermanentError), ("quota", NoSpace)])
def test_permanent_errors_fail_fast(
    s3_server: S3Server, proxy: FaultProxy, fault: str, kind: type[Exception]
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    b.save("data/p", b"pack")
    r, sleeps = retrying(b, attempts=5)
    proxy.always(fault)
    before = proxy.count()
    for verb in (lambda: r.load("data/p"), lambda: r.save("data/q", b"x"), lambda: r.list("")):
        with pytest.raises(kind):
            verb()
    assert proxy.count() - before == 3
    assert r.retries == 0 and sleeps == []


def test_wrong_credentials_fail_fast_with_a_hint(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.new_bucket()
    s3_server.backend(bucket).create()
    r, sleeps = retrying(s3_server.backend(bucket, endpoint=proxy.endpoint, secret="wrong-secret"))
    with pytest.raises(PermanentError) as info:
        r.load("config")
    assert "SignatureDoesNotMatch" in str(info.value)
    assert "credentials" in info.value.hint
    assert proxy.count() == 1 and sleeps == []


def _filled(server: S3Server, proxy: FaultProxy, count: int) -> tuple[S3Backend, list[str]]:
    b = server.backend(server.new_bucket(), "r", endpoint=proxy.endpoint, list_page_size=4)
    b.create()
    names = [f"data/{i % 5:02x}/{i:04d}" for i in range(count)]
    for name in reversed(names):
        b.save(name, name.encode())
    return b, names


def test_listings_are_paginated_and_complete(s3_server: S3Server, proxy: FaultProxy) -> None:
    b, names = _filled(s3_server, proxy, 25)
    assert [i.name for i in b.list("")] == sorted(names)
    assert [i.name for i in b.list("data/03/")] == sorted(n for n in names if "/03/" in n)
    # 25 objects in pages of 4 is 7 pages; the 5 under data/03/ are 2
    assert proxy.count(lambda s: s.is_listing) == 9
    assert proxy.count(lambda s: s.is_page_after_first) == 7


def test_folder_markers_are_not_objects(s3_server: S3Server, proxy: FaultProxy) -> None:
    b, names = _filled(s3_server, proxy, 3)
    proxy.always("folder-markers", lambda s: s.is_listing)
    assert [i.name for i in b.list("")] == sorted(names)
    assert [i.name for i in b.list("data/")] == sorted(names)
    assert proxy.count(lambda s: s.fault == "folder-markers") == 2


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("500", TransientError), ("403", PermanentError), ("drop-token", TransientError)],
)
def test_a_listing_error_raises_never_a_partial_listing(
    s3_server: S3Server, proxy: FaultProxy, fault: str, kind: type[Exception]
) -> None:
    b, names = _filled(s3_server, proxy, 25)
    r, _ = retrying(b, attempts=3)
    if fault == "drop-token":  # every first page loses its token
        proxy.always(fault, lambda s: s.is_listing)
    else:  # the first page is fine, a later one fails
        proxy.always(fault, lambda s: s.is_page_after_first)
    with pytest.raises(kind):
        r.list("")
    expected_lists = 1 if fault == "403" else 3
    assert proxy.count(lambda s: s.fault is not None) == expected_lists
    proxy.heal()
    assert [i.name for i in r.list("")] == sorted(names)


def test_a_stall_past_the_read_timeout_is_retried(s3_server: S3Server, proxy: FaultProxy) -> None:
    proxy.stall_s = 2.0
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint, read_timeout=0.5)
    b.create()
    b.save("data/p", b"pack bytes")
    r, _ = retrying(b)
    proxy.always("stall", is_get, times=1)
    started = time.monotonic()
    assert r.load("data/p", 5, 5) == b"bytes"
    assert 0.5 <= time.monotonic() - started < 2.0
    assert r.retries == 1


def test_a_reset_mid_upload_is_retried_with_identical_bytes(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    r, _ = retrying(b)
    data = os.urandom(2048 * KiB)

    def put(seen: Seen) -> bool:
        return seen.method == "PUT" and seen.path == f"/{bucket}/data/ab/pack"

    proxy.always("reset", put, times=2)
    r.save("data/ab/pack", data)
    assert s3_server.stored(bucket, "data/ab/pack") == data
    assert proxy.count(put) == 3 and r.retries == 2


def test_a_lost_answer_to_a_delete_counts_as_deleted(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint)
    b.create()
    r, _ = retrying(b)
    r.save("locks/l", b"lock")
    proxy.always("lost", lambda s: s.method == "DELETE", times=1)
    r.remove("locks/l")  # deleted, though the first answer never came
    with pytest.raises(ObjectNotFound):
        r.remove("locks/l")
    assert r.retries == 1


def test_a_workload_survives_faults_with_identical_stored_bytes(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    """R10: a quarter of all distinct requests fail in every way the proxy knows; every
    verb still succeeds, the bytes on the server's disk are exactly the ones saved, and
    each fault costs at most one retry."""
    proxy.stall_s = 1.0
    proxy.inject(0.25, seed=10)
    bucket = s3_server.new_bucket()
    inner = s3_server.backend(
        bucket,
        "vault",
        endpoint=proxy.endpoint,
        multipart_threshold=128 * KiB,
        part_size=64 * KiB,
        list_page_size=5,
        read_timeout=0.5,
    )
    b, sleeps = retrying(inner, attempts=10)
    b.create()
    rng = random.Random(7)
    expected: dict[str, bytes] = {}
    for i in range(40):
        name = f"data/{i % 4:02x}/{i:04d}"
        data = rng.randbytes(rng.choice([0, 1, 900, 20 * KiB, 70 * KiB, 200 * KiB]))
        if i % 3:
            b.save(name, data)
        else:
            staged = b.stage("data/")
            staged.write(data)
            staged.publish(name)
        expected[name] = data
    for name, data in expected.items():
        assert b.load(name) == data
        if len(data) > 10:
            assert b.load(name, 3, len(data) - 7) == data[3:-4]
    for name in list(expected)[::5]:
        b.remove(name)
        del expected[name]
    assert [(i.name, i.size) for i in b.list("")] == [
        (n, len(d)) for n, d in sorted(expected.items())
    ]
    on_disk = [k for k in s3_server.stored_keys(bucket) if ".rclone_temp_" not in k]
    assert on_disk == sorted(f"vault/{n}" for n in expected)
    for name, data in expected.items():
        assert s3_server.stored(bucket, f"vault/{name}") == data

    faults = proxy.faults()
    assert sum(faults.values()) >= 40
    assert set(faults) >= set(RANDOM_KINDS) - {"drop-token"}  # drop-token needs a full page
    assert 0 < b.retries == len(sleeps) <= sum(faults.values())


# --- object lock -------------------------------------------------------------------------------


def test_object_lock_retention_is_asked_for_on_new_objects(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    clock = FakeClock()
    bucket = s3_server.new_bucket()
    b = s3_server.backend(
        bucket,
        endpoint=proxy.endpoint,
        lock_days=30,
        multipart_threshold=32 * KiB,
        part_size=16 * KiB,
        clock=clock,
    )
    b.create()
    b.save("snapshots/s", b"snapshot")
    b.save("data/ab/pack", os.urandom(40 * KiB))
    b.save("locks/l", b"lock")
    bucket_created = proxy.requests[1]  # after the HEAD that found no bucket
    assert (bucket_created.method, bucket_created.path) == ("PUT", f"/{bucket}")
    assert bucket_created.headers.get("x-amz-bucket-object-lock-enabled") == "true"
    until = datetime.fromtimestamp(clock.now_ns() / 1e9, UTC) + timedelta(days=30)
    stamp = until.strftime("%Y-%m-%dT%H:%M:%S")
    retention = {
        s.path: (
            s.headers.get("x-amz-object-lock-mode"),
            s.headers.get("x-amz-object-lock-retain-until-date", "")[:19],
        )
        for s in proxy.requests[2:]
        if s.method in ("PUT", "POST") and "uploadId=" not in s.path
    }
    assert retention == {
        f"/{bucket}/snapshots/s": ("GOVERNANCE", stamp),
        f"/{bucket}/data/ab/pack?uploads": ("GOVERNANCE", stamp),
        f"/{bucket}/locks/l": (None, ""),
    }


def test_refused_object_lock_is_a_clear_permanent_error(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    b = s3_server.backend(bucket, endpoint=proxy.endpoint, lock_days=7)
    b.create()
    r, sleeps = retrying(b)
    proxy.always("lock-refused", lambda s: "x-amz-object-lock-mode" in s.headers)
    with pytest.raises(PermanentError) as info:
        r.save("config", b"c")
    assert "object-lock" in str(info.value) and "Object Lock" in info.value.hint
    assert sleeps == []
    r.save("locks/l", b"no retention asked, so no refusal")


# --- buckets and prefixes ---------------------------------------------------------------------


def test_create_makes_the_bucket_and_shares_it_between_prefixes(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    one, two = s3_server.backend(bucket, "one"), s3_server.backend(bucket, "two/deeper")
    assert not one.exists()
    one.create()
    two.create()  # the bucket is there: fine
    one.save("config", b"1")
    two.save("config", b"2")
    assert [i.name for i in one.list("")] == ["config"]
    assert (one.load("config"), two.load("config")) == (b"1", b"2")
    assert s3_server.stored_keys(bucket) == ["one/config", "two/deeper/config"]


def test_exists_with_wrong_credentials_is_an_error_not_absent(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3_server.backend(bucket).create()
    with pytest.raises(PermanentError):
        s3_server.backend(bucket, secret="wrong").exists()


def test_a_bucket_with_a_refused_head_but_a_listable_prefix_exists(
    s3_server: S3Server, proxy: FaultProxy
) -> None:
    """Credentials scoped to a prefix may not HEAD the bucket, yet may use it."""
    bucket = s3_server.new_bucket()
    s3_server.backend(bucket).create()
    b = s3_server.backend(bucket, "mine", endpoint=proxy.endpoint)
    proxy.always("403", lambda s: s.method == "HEAD" and s.path == f"/{bucket}")
    assert b.exists()
    b.create()  # nothing to do
    proxy.always("403", lambda s: s.is_listing)
    with pytest.raises(PermanentError):
        b.exists()


# --- secrets (R18) ---------------------------------------------------------------------------


def test_a_wrong_secret_appears_in_no_error_repr_or_log(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"S3-SECRET-MARKER-{os.urandom(6).hex()}"
    bucket = s3_server.new_bucket()
    s3_server.backend(bucket).create()
    caplog.set_level(logging.DEBUG)
    b, _ = retrying(s3_server.backend(bucket, secret=marker))
    texts = [repr(b), b.location]
    for verb in (lambda: b.load("x"), lambda: b.save("x", b"1"), lambda: b.list(""), b.exists):
        with pytest.raises(PermanentError) as info:
            verb()
        texts += [str(info.value), info.value.hint, repr(info.value.__cause__)]
    assert ACCESS_KEY in caplog.text  # the debug log does show the requests
    assert marker not in "\n".join(texts) + caplog.text


# --- the CLI, end to end -------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    rng = random.Random(3)
    files = {
        "a.txt": b"hello\n" * 5000,
        "sub/b.bin": rng.randbytes(300 * KiB),
        "sub/deeper/c": rng.randbytes(5),
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _round_trip(url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    for argv in (
        ["init"],
        ["backup", "--client", "web01", str(src)],
        ["restore", "latest", "--client", "web01", "--target", str(tmp_path / "t"), "--verify"],
        ["check", "--read-data"],
    ):
        r = cli("--repo", url, *argv)
        assert r.code == 0, (argv, r.stderr)
    restored = tmp_path / "t" / src.relative_to("/")
    for rel, data in files.items():
        assert (restored / rel).read_bytes() == data


def test_cli_init_backup_restore_check_on_s3(aws_env: S3Server, tmp_path: Path) -> None:
    bucket = aws_env.new_bucket()
    _round_trip(aws_env.url(bucket, "vault/one"), tmp_path)
    kinds = {key.split("/")[2] for key in aws_env.stored_keys(bucket)}
    assert kinds >= {"config", "keys", "data", "index", "snapshots"}
    assert all(key.startswith("vault/one/") for key in aws_env.stored_keys(bucket))


def test_cli_round_trip_through_faults(
    aws_env: S3Server, proxy: FaultProxy, tmp_path: Path
) -> None:
    """R10 through the whole program: open_backend's retries ride out the faults."""
    proxy.inject(0.1, kinds=[k for k in RANDOM_KINDS if k != "stall"], seed=5)
    _round_trip(aws_env.url(aws_env.new_bucket(), "vault", endpoint=proxy.endpoint), tmp_path)
    assert sum(proxy.faults().values()) >= 3


def test_full_packs_of_a_real_backup_go_up_as_multipart_uploads(
    aws_env: S3Server, proxy: FaultProxy, tmp_path: Path
) -> None:
    """With the default sizes: a backup of 40 MiB of incompressible data fills packs
    to their 16 MiB target, and each of those is sent in 8 MiB parts, never in one PUT."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(11).randbytes(40 * 1024 * KiB))
    bucket = aws_env.new_bucket()
    url = aws_env.url(bucket, "site", endpoint=proxy.endpoint)
    assert cli("--repo", url, "init").code == 0
    r = cli("--repo", url, "backup", "--client", "web01", str(src))
    assert r.code == 0, r.stderr

    packs = {
        key: len(aws_env.stored(bucket, key))
        for key in aws_env.stored_keys(bucket)
        if key.startswith("site/data/")
    }
    full = sorted(key for key, size in packs.items() if size >= 16 * 1024 * KiB)
    assert len(full) >= 2, packs
    for key in full:
        path = f"/{bucket}/{key}"
        assert proxy.count(lambda s, p=path: s.method == "POST" and s.path == p + "?uploads") == 1
        parts = proxy.count(lambda s, p=path: s.method == "PUT" and s.path.startswith(p + "?"))
        assert parts == -(-packs[key] // (8 * 1024 * KiB)), key
        assert proxy.count(lambda s, p=path: s.method == "PUT" and s.path == p) == 0
    # Small objects still go in one PUT.
    assert proxy.count(lambda s: s.method == "POST" and "/snapshots/" in s.path) == 0
    r = cli("--repo", url, "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr


@pytest.mark.parametrize("prefix", ["snapshots", "index", "data"])
def test_a_listing_error_aborts_a_collection_on_s3(
    aws_env: S3Server, proxy: FaultProxy, tmp_path: Path, prefix: str
) -> None:
    """R10: prune on S3 whose listing of one kind of object is refused deletes nothing
    (exit 10); once storage answers again, the next prune reclaims the space."""
    bucket = aws_env.new_bucket()
    url = aws_env.url(bucket, "site", endpoint=proxy.endpoint)
    assert cli("--repo", url, "init").code == 0
    old, kept = tmp_path / "old", tmp_path / "kept"
    _tree(old)
    (kept / "k").mkdir(parents=True)
    (kept / "k" / "file").write_bytes(os.urandom(200 * KiB))
    for client, src in (("old", old), ("kept", kept)):
        assert cli("--repo", url, "backup", "--client", client, str(src)).code == 0
    assert cli("--repo", url, "forget", "--client", "old", "--keep-last", "0",
               "--unsafe-allow-remove-all").code == 0  # fmt: skip
    stored = [k for k in aws_env.stored_keys(bucket) if "/locks/" not in k]
    deletes = proxy.count(lambda s: s.method == "DELETE" and "/locks/" not in s.path)

    def listing(seen: Seen) -> bool:
        return seen.is_listing and f"prefix=site%2F{prefix}%2F" in seen.path

    proxy.always("403", listing)
    r = cli("--repo", url, "prune")
    assert r.code == 10, r.stdout + r.stderr
    assert "403" in r.stderr or "AccessDenied" in r.stderr, r.stderr
    assert proxy.count(lambda s: s.fault == "403") == 1
    assert [k for k in aws_env.stored_keys(bucket) if "/locks/" not in k] == stored
    assert proxy.count(lambda s: s.method == "DELETE" and "/locks/" not in s.path) == deletes

    proxy.heal()
    r = cli("--repo", url, "--json", "prune")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["packs_deleted"] > 0
    assert cli("--repo", url, "check", "--read-data").code == 0


def test_cli_never_shows_the_secret_key(aws_env: S3Server, tmp_path: Path) -> None:
    """R18: a marker secret that the server refuses, in a real process with -v."""
    bucket = aws_env.new_bucket()
    url = aws_env.url(bucket, "vault")
    assert cli("--repo", url, "init").code == 0
    marker = f"S3-SECRET-MARKER-{os.urandom(6).hex()}"
    outputs = []
    for argv in (["init"], ["snapshots"], ["backup", str(tmp_path)], ["check"]):
        proc = cli_subprocess(
            ["-v", "--repo", url, *argv],
            env={"AWS_SECRET_ACCESS_KEY": marker, "STRONGROOM_PASSWORD": "pw"},
            timeout=120,
        )
        assert proc.returncode == 10, proc.stderr  # refused: a storage error
        outputs.append(proc.stdout + proc.stderr)
    assert b"SignatureDoesNotMatch" in outputs[1]
    assert not any(marker.encode() in out for out in outputs)
