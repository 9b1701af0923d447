"""What a job checks and runs "on the client" goes through the client's agent, over a
real sshd: fresh-file prerequisites, `on = "client"` commands and hooks, with their
timeouts enforced there."""

from __future__ import annotations

import io
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from strongroom.agent.client import serve
from strongroom.agent.protocol import MINOR, VERSION, ProtocolError, read_frame, write_frame
from tests.agent.conftest import Sshd
from tests.conftest import cli, repo_with_password_file

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
OLD_AGENT = ["sh", "-c", f"exec {sys.executable} {FAKE_AGENT}", "fake-ssh"]  # protocol 1.0


def _client(name: str, sshd: Sshd, agent: Path, source: Path, extra: str) -> str:
    return (
        f'[clients.{name}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {sshd.port}\n'
        f"ssh_command = {json.dumps(sshd.ssh_command())}\n"
        f'agent_command = ["{agent}"]\nsources = ["{source}"]\n{extra}'
    )


@pytest.fixture
def site(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SSH_CONNECTION", raising=False)  # set only by the test sshd
    repo = repo_with_password_file(tmp_path)
    src = tmp_path / "client-data"
    src.mkdir()
    (src / "app.dump").write_text("-- dump\n" * 200)
    # The agent as the client runs it: every start is logged with the ssh session that
    # started it, so a check that bypassed the agent would be seen.
    agent = tmp_path / "agent"
    agent.write_text(
        f'#!/bin/sh\necho "started by ${{SSH_CONNECTION:-nobody}}" >> {tmp_path}/agent.log\n'
        f"exec {shlex.join(sshd.agent_command())}\n"
    )
    agent.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    where = 'echo "${SSH_CONNECTION:-director}:$STRONGROOM_CLIENT/$STRONGROOM_JOB" > '
    db = (
        '[[clients.db.requires]]\nkind = "fresh-file"\n'
        f'path = "{src}/app.dump"\nmax_age = "1h"\nmin_size = "1KiB"\n'
        '[[clients.db.requires]]\nkind = "command"\non = "client"\n'
        f"command = {json.dumps(['sh', '-c', where + str(out / 'check')])}\n"
        '[[clients.db.hooks]]\nwhen = "before"\n'
        f"command = {json.dumps(['sh', '-c', where + str(out / 'before')])}\n"
        '[[clients.db.hooks]]\nwhen = "after"\non = "director"\n'
        f"command = {json.dumps(['sh', '-c', where + str(out / 'after')])}\n"
    )
    slow = (
        '[[clients.slow.hooks]]\nwhen = "before"\ntimeout = "1s"\n'
        f"command = {json.dumps(['sh', '-c', f'sleep 60 & echo $! > {out}/pid; wait'])}\n"
    )
    old = (
        f'[[clients.old.requires]]\nkind = "fresh-file"\npath = "{src}/app.dump"\nmax_age = "1h"\n'
    )
    missing = (
        '[[clients.missing.requires]]\nkind = "fresh-file"\n'
        f'path = "{src}/no-such.dump"\nmax_age = "1h"\n'
    )
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        + _client("db", sshd, agent, src, db) + "\n"
        + _client("slow", sshd, agent, src, slow) + "\n"
        + _client("missing", sshd, agent, src, missing) + "\n"
        + _client("old", sshd, agent, src, old).replace(
            json.dumps(sshd.ssh_command()), json.dumps(OLD_AGENT))
    )  # fmt: skip
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "old-agent-saw.json"))
    monkeypatch.setenv("FAKE_AGENT_MODE", "none")
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    return tmp_path


def test_ssh_never_gets_the_repository_password(
    site: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R18: ssh (and whatever its config forwards with SendEnv) gets the director's
    environment without the repository's password, for checks, hooks and backups."""
    mark = "repo-pw-MARK-5e6f7a"
    monkeypatch.setenv("STRONGROOM_PASSWORD", mark)  # set, though the config's file wins
    envs = site / "ssh-env"
    wrapper = ["sh", "-c", f'env >> {envs}; echo ---- >> {envs}; exec "$@"', "ssh"]
    config = site / "strongroom.toml"
    ssh = json.dumps(sshd.ssh_command())
    config.write_text(config.read_text().replace(ssh, json.dumps(wrapper + sshd.ssh_command())))
    r = cli("run", "db", "--json")
    assert r.code == 0, r.stdout + r.stderr
    seen = envs.read_text()
    assert seen.count("----") == 4  # stat, check command, before hook, backup
    assert "PATH=" in seen and mark not in seen


def _agent_starts(site: Path) -> list[str]:
    log = site / "agent.log"
    return log.read_text().splitlines() if log.exists() else []


def test_fresh_file_and_client_commands_are_checked_by_the_agent(site: Path) -> None:
    r = cli("preflight", "db", "--json")
    assert r.code == 0, r.stdout + r.stderr
    checks = json.loads(r.stdout)["checks"]
    assert [c["met"] for c in checks] == [True, True, True]
    assert "1600 bytes" in checks[1]["detail"]
    # One agent for the file, one for the command; both started over ssh.
    starts = _agent_starts(site)
    assert len(starts) == 2 and all(s.startswith("started by 127.0.0.1 ") for s in starts)
    ran = (site / "out" / "check").read_text().strip()
    assert ran.startswith("127.0.0.1 ") and ran.endswith(":db/default")


def test_a_file_missing_on_the_client_is_named(site: Path) -> None:
    r = cli("run", "missing", "--json")
    assert r.code == 21
    summary = json.loads(r.stdout.splitlines()[-1])
    assert "No such file or directory (on the client)" in summary["message"]
    assert len(_agent_starts(site)) == 1  # the stat; no backup was attempted


def test_an_agent_before_1_2_is_not_asked_and_the_reason_says_upgrade(site: Path) -> None:
    r = cli("preflight", "old", "--json")
    assert r.code == 21, r.stdout + r.stderr
    [check] = [c for c in json.loads(r.stdout)["checks"] if not c["met"]]
    assert "checking a file there needs 1.2" in check["detail"]
    assert "upgrade strongroom on the client" in check["detail"]
    assert not (site / "old-agent-saw.json").exists()  # no request reached it


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = io.BytesIO(), io.BytesIO()
    write_frame(reader, {"op": "hello", "version": VERSION, "minor": MINOR})
    write_frame(reader, request)
    reader.seek(0)
    assert serve(reader, writer) == 0
    writer.seek(0)
    assert read_frame(writer)["minor"] == MINOR == 3
    return read_frame(writer)


def test_the_agent_answers_stat_and_run(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    found = _serve({"op": "stat", "path": str(tmp_path / "f")})
    assert (found["op"], found["size"], found["regular"]) == ("stat", 10, True)
    assert found["mtime_ns"] == (tmp_path / "f").stat().st_mtime_ns
    assert _serve({"op": "stat", "path": str(tmp_path / "nope")})["error"] == (
        "No such file or directory"
    )
    ran = _serve({"op": "run", "command": ["sh", "-c", "echo $X; echo oops >&2; exit 3"],
                  "timeout": 5, "env": {"X": "y"}})  # fmt: skip
    assert ran == {"op": "ran", "exit_code": 3, "timed_out": False, "output": "oops"}
    ran = _serve({"op": "run", "command": ["sleep", "30"], "timeout": 0.2, "env": {}})
    assert ran["timed_out"] is True
    ran = _serve({"op": "run", "command": ["/no/such/program"], "timeout": 5, "env": {}})
    assert ran["exit_code"] == 127 and "cannot run /no/such/program" in ran["output"]


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "run", "command": [], "timeout": 5, "env": {}},
        {"op": "run", "command": ["true", 1], "timeout": 5, "env": {}},
        {"op": "run", "command": ["true"], "timeout": -1, "env": {}},
        {"op": "run", "command": ["true"], "timeout": 5, "env": {"X": 1}},
        {"op": "stat", "path": 7},
    ],
)
def test_the_agent_refuses_malformed_checks(request_: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        _serve(request_)


def test_hooks_run_on_the_client_by_default_and_on_the_director_when_asked(site: Path) -> None:
    r = cli("run", "db", "--json")
    assert r.code == 0, r.stdout + r.stderr
    out = site / "out"
    assert (out / "before").read_text().strip().startswith("127.0.0.1 ")
    assert (out / "before").read_text().strip().endswith(":db/default")
    assert (out / "after").read_text().strip() == "director:db/default"
    # stat, the check command, the before hook, the backup
    assert len(_agent_starts(site)) == 4


def test_a_client_hook_past_its_timeout_is_stopped_there(site: Path) -> None:
    started = time.monotonic()
    r = cli("run", "slow", "--json")
    assert time.monotonic() - started < 30
    assert r.code == 22, r.stdout + r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert "before hook sh -c" in summary["message"] and "timed out after 1s" in summary["message"]
    assert summary["snapshot_id"] is None
    pid = int((site / "out" / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the hook's child outlived its timeout"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
