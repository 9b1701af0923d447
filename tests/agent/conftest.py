"""A real sshd on loopback, with its own host key, config and port, for agent tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    key: Path
    cache_dir: Path

    def ssh_command(self) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5",
        ]  # fmt: skip

    def agent_command(self) -> list[str]:
        # The agent's files cache goes to the test's directory, not root's home.
        return ["env", f"STRONGROOM_CACHE_DIR={self.cache_dir}", sys.executable, "-m",
                "strongroom", "agent"]  # fmt: skip


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"a test sshd is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        _unavailable("openssh-server is not installed (scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        _unavailable("the test sshd runs as root")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True
        )
    (home / "authorized_keys").write_bytes((home / "client_key.pub").read_bytes())
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
        f"AuthorizedKeysFile {home}/authorized_keys\nPidFile {home}/sshd.pid\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AcceptEnv none\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(
        [SSHD, "-D", "-f", str(home / "sshd_config"), "-E", str(home / "sshd.log")]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (home / "sshd.log").read_text() if (home / "sshd.log").exists() else ""
                    _unavailable(f"the test sshd did not start: {log[-500:]}")
                time.sleep(0.1)
        yield Sshd(port, home / "client_key", home / "agent-cache")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
