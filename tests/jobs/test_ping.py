"""The optional ping command of the reachability check: a failure is exit 20."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port that accepts TCP connections, so only the ping can fail."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def _config(tmp_path: Path, port: int, ping: str) -> None:
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        f'[clients.web1]\nhost = "127.0.0.1"\nport = {port}\nsources = ["/etc/hostname"]\n'
        f"ping_command = {ping}\n"
    )


def test_a_failing_ping_is_exit_20_and_names_the_command(
    tmp_path: Path, listening_port: int
) -> None:
    _config(tmp_path, listening_port, '["sh", "-c", "exit 1", "{host}"]')
    r = cli("preflight", "web1")
    assert r.code == 20
    assert "ping command" in r.stderr and "exited 1" in r.stderr


def test_a_passing_ping_gets_the_host_and_lets_preflight_pass(
    tmp_path: Path, listening_port: int
) -> None:
    seen = tmp_path / "pinged"
    _config(tmp_path, listening_port, f'["sh", "-c", "echo $0 > {seen}", "{{host}}"]')
    r = cli("preflight", "web1")
    assert r.code == 0, r.stderr
    assert seen.read_text().strip() == "127.0.0.1"
