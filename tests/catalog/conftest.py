"""Catalog fixtures: every test runs on SQLite (a temporary file) and on a real PostgreSQL.

PostgreSQL comes from, in order: ``SR_TEST_POSTGRES_URL`` (an admin URL; the
database in it is only used to create others), the server on 127.0.0.1:5432, that
server after ``pg_ctlcluster ... start``, or a throw-away cluster made with ``initdb``
(as the ``postgres`` user when running as root) on a free port. When none can be had
the PostgreSQL tests skip, except under ``CI=true``, where they fail.
Each test gets a fresh database ``sr_test_<random>``, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from sqlalchemy.engine import make_url

from strongroom.catalog import Catalog
from strongroom.clock import FakeClock

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCK_FILE = Path(tempfile.gettempdir()) / "strongroom-test-postgres.lock"


def _conninfo(url: str) -> str:
    u = make_url(url)
    parts = {
        "host": u.host or "127.0.0.1",
        "port": str(u.port or 5432),
        "user": u.username or "postgres",
        "dbname": u.database or "postgres",
    }
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(_conninfo(url), connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _wait_for(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(url):
            return True
        time.sleep(0.3)
    return False


def _start_debian_cluster() -> str:
    """Start the packaged cluster(s); returns what happened, for the skip reason."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        return "no packaged PostgreSQL cluster"
    out = []
    for version in versions:
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out.append(
            f"pg_ctlcluster {version} main start: exit {result.returncode} {result.stderr.strip()}"
        )
    return "; ".join(out)


def _pg_binary(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _OwnCluster:
    """A throw-away cluster in a temporary directory, stopped and removed at the end."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("initdb/pg_ctl not found (install postgresql)")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="sr-test-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run([initdb, "-A", "trust", "-U", "postgres", "-D", str(self.data)])
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.dir / "log"),
                "-w",
                "start",
            ]
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()[-500:]}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


# Why PostgreSQL could not be had: the session fixture is retried for every test that
# asks for it, and finding out again (start attempts, initdb) would cost seconds each.
_failures: list[str] = []


def _unavailable(reason: str) -> NoReturn:
    if not _failures:
        _failures.append(reason)
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A URL of a PostgreSQL database that may create and drop other databases."""
    if _failures:
        _unavailable(_failures[0])
    explicit = os.environ.get("SR_TEST_POSTGRES_URL")
    if explicit:
        if not _answers(explicit):
            _unavailable(f"SR_TEST_POSTGRES_URL={explicit} does not answer")
        yield explicit
        return
    with LOCK_FILE.open("w") as lock:  # xdist workers: one starts the server, others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(DEFAULT_ADMIN_URL):
            url = DEFAULT_ADMIN_URL
            cluster = None
        else:
            tried = _start_debian_cluster()
            if _wait_for(DEFAULT_ADMIN_URL, 15):
                url, cluster = DEFAULT_ADMIN_URL, None
            else:
                try:
                    cluster = _OwnCluster()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    _unavailable(f"127.0.0.1:5432 does not answer; {tried}; {exc}")
                url = cluster.url
    try:
        yield url
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"sr_test_{secrets.token_hex(6)}"
    admin = _conninfo(postgres_admin_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, un-migrated catalog database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catalog(catalog_url: str, clock: FakeClock) -> Iterator[Catalog]:
    """A migrated catalog of each kind, on a fake clock."""
    with Catalog.open(catalog_url, auto_migrate=True, clock=clock) as opened:
        yield opened
