"""`strongroom run` of clients over SSH, through a real sshd and the agent."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tests.agent.conftest import Sshd, free_port
from tests.conftest import cli, repo_with_password_file


@pytest.fixture
def fleet(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = repo_with_password_file(tmp_path)
    rng = random.Random(5)
    src = tmp_path / "remote-data"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "big.bin").write_bytes(rng.randbytes(3_000_000))
    os.symlink("etc/hosts", src / "link")
    for f in (src / "etc" / "hosts", src / "big.bin"):  # old, as unchanged files are
        os.utime(f, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    big = tmp_path / "huge"
    big.mkdir()
    (big / "huge.bin").write_bytes(rng.randbytes(80_000_000))

    def client(name: str, port: int, source: Path, extra: str = "") -> str:
        return (
            f'[clients.{name}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {port}\n'
            f"ssh_command = {json.dumps(sshd.ssh_command())}\n"
            f"agent_command = {json.dumps(sshd.agent_command())}\n"
            f'sources = ["{source}"]\n{extra}'
        )

    ssh_killer = json.dumps(["timeout", "-s", "KILL", "1", *sshd.ssh_command()])
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        + client("web01", sshd.port, src) + "\n"
        + client("offline", free_port(), src) + "\n"
        + client("guarded", sshd.port, src, extra=(
            '[[clients.guarded.requires]]\nkind = "command"\non = "client"\n'
            'command = ["test", "-d", "/"]\n'
            '[[clients.guarded.requires]]\nkind = "fresh-file"\n'
            f'path = "{src}/etc/hosts"\nmax_age = "1h"\n'
        )) + "\n"
        + client("flaky", sshd.port, big).replace(
            f"ssh_command = {json.dumps(sshd.ssh_command())}", f"ssh_command = {ssh_killer}"
        )
    )  # fmt: skip
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    return tmp_path


def _summary(stdout: str) -> dict[str, object]:
    return dict(json.loads(stdout.splitlines()[-1]))


def test_a_client_is_backed_up_over_ssh_and_restores_exactly(fleet: Path) -> None:
    r = cli("run", "web01", "--json")
    assert r.code == 0, r.stdout + r.stderr
    summary = _summary(r.stdout)
    assert summary["snapshot_id"] and summary["bytes_read"] == 3_000_000 + 20

    target = fleet / "restored"
    r = cli("--repo", "main", "restore", "latest", "--client", "web01", "--target", str(target))
    assert r.code == 0, r.stderr
    restored = target / str(fleet / "remote-data").lstrip("/")
    assert (restored / "big.bin").read_bytes() == (fleet / "remote-data" / "big.bin").read_bytes()
    assert os.readlink(restored / "link") == "etc/hosts"
    assert cli("--repo", "main", "check", "--read-data").code == 0

    again = cli("run", "web01", "--json")
    assert again.code == 0
    assert _summary(again.stdout)["bytes_read"] == 0  # the agent's files cache
    assert cli("find", "hosts", "--json").stdout.count('"client": "web01"') == 2


def test_an_unreachable_client_exits_20_and_is_recorded(fleet: Path) -> None:
    r = cli("run", "offline", "--json")
    assert r.code == 20, r.stdout + r.stderr
    assert "offline" in r.stdout
    status = json.loads(cli("status", "--json").stdout)
    runs = {c["client"]: c["last_run"] for c in status["clients"]}
    assert runs["offline"]["status"] == "failed" and runs["offline"]["exit_code"] == 20


def test_a_connection_cut_mid_stream_fails_cleanly(fleet: Path) -> None:
    """R11: the run fails within its timeout, the repository stays consistent, the run
    is recorded once, and the next run succeeds."""
    r = cli("run", "flaky", "--json")
    assert r.code == 20, r.stdout + r.stderr
    assert cli("--repo", "main", "check", "--read-data").code == 0
    report = json.loads(cli("report", "--format", "json").stdout)
    assert [(x["client"], x["exit_code"]) for x in report["runs"]] == [("flaky", 20)]
    assert cli("run", "web01").code == 0


def test_restore_to_a_client_through_its_agent(fleet: Path) -> None:
    assert cli("run", "web01").code == 0
    target = fleet / "on-the-client"
    r = cli("--repo", "main", "restore", "latest", "--client", "web01", "--to-client", "web01",
            "--target", str(target), "--verify", "--json")  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["verified"] == 2 and summary["errors"] == 0
    restored = target / str(fleet / "remote-data").lstrip("/")
    assert (restored / "big.bin").read_bytes() == (fleet / "remote-data" / "big.bin").read_bytes()
    assert os.readlink(restored / "link") == "etc/hosts"


def test_prerequisites_are_checked_on_the_client_over_ssh(fleet: Path) -> None:
    r = cli("preflight", "guarded", "--json")
    assert r.code == 21, r.stdout + r.stderr
    [stale] = [c for c in json.loads(r.stdout)["checks"] if not c["met"]]
    assert "modified 2020-09-13" in stale["detail"]  # the backdated hosts file, read there
    os.utime(fleet / "remote-data" / "etc" / "hosts")
    r = cli("preflight", "guarded", "--json")
    assert r.code == 0, r.stderr
    checks = json.loads(r.stdout)["checks"]
    assert [c["met"] for c in checks] == [True, True, True]
    assert checks[1]["name"] == "command test -d /"
