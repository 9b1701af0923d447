"""Shared fixtures: an isolated environment, an in-process CLI runner, a subprocess one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.cli.main import run
from strongroom.repository import TEST_KDF, Repository

PASSWORD = "correct horse battery staple"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: cheap KDF, its own cache dir, a known password, no stray settings."""
    for name in list(os.environ):
        if name.startswith("STRONGROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STRONGROOM_INSECURE_TEST_KDF", "1")
    monkeypatch.setenv("STRONGROOM_PASSWORD", PASSWORD)
    monkeypatch.setenv("STRONGROOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STRONGROOM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # no ./strongroom.toml from wherever pytest was started
    yield


def cli(*args: str) -> Result:
    """Run strongroom in this process; returns exit code and captured output."""
    out_bytes = io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(list(args))
    out.flush()
    raw = out_bytes.getvalue()
    return Result(code, raw.decode("utf-8", "replace"), err.getvalue(), raw)


def cli_subprocess(
    args: Sequence[str], env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``strongroom`` program in a child process."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "strongroom", *args],
        env=full_env,
        capture_output=True,
        check=False,
        **kwargs,
    )


def init_repo(path: Path) -> Path:
    """An initialised, empty repository at ``path``."""
    result = cli("--repo", str(path), "init")
    assert result.code == 0, result.stderr
    return path


def open_local_repo(path: Path) -> Repository:
    """A new repository in a local directory at ``path`` (the test KDF, password
    ``pw``), its index loaded: for tests that drive the engine without the CLI."""
    repo = Repository.init(
        LocalBackend(path), b"pw", kdf=TEST_KDF, created="", hostname="", username=""
    )
    repo.load_index()
    return repo


def repo_with_password_file(tmp_path: Path) -> Path:
    """An initialised repository at ``tmp_path/repo`` and its password in
    ``tmp_path/pass``, for a config's ``password_file``."""
    (tmp_path / "pass").write_text(PASSWORD)
    return init_repo(tmp_path / "repo")


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    """An initialised, empty repository."""
    return init_repo(tmp_path / "repo")
