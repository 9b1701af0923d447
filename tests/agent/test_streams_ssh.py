"""Job streams of a client reached over SSH: run by its agent (`on = "client"`) or on the
director (`on = "director"`), through a real sshd; any failure means no snapshot. And
the agent's checks of the streams a director asks for."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from strongroom.agent.client import serve
from strongroom.agent.protocol import MINOR, VERSION, read_frame, write_frame
from tests.agent.conftest import Sshd
from tests.conftest import cli, repo_with_password_file

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
SIZE = 12_000_000
GENERATE = f"import random,sys; sys.stdout.buffer.write(random.Random(11).randbytes({SIZE}))"
# Where did it run? Under sshd, SSH_CONNECTION is set; the director sets STRONGROOM_CLIENT.
WHERE = ["sh", "-c", 'echo "ssh=${SSH_CONNECTION:+yes} client=${STRONGROOM_CLIENT:-}"']


def _stream(name: str, command: list[str], on: str = "") -> str:
    where = f', on = "{on}"' if on else ""
    return f"{{ name = {json.dumps(name)}, command = {json.dumps(command)}{where} }}"


@pytest.fixture
def fleet(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SSH_CONNECTION", raising=False)  # the director's own environment
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "agent-saw.json"))
    monkeypatch.setenv("FAKE_AGENT_MODE", "remove")
    repo = repo_with_password_file(tmp_path)
    src = tmp_path / "remote-data"
    src.mkdir()
    (src / "pg_hba.conf").write_text("local all all peer\n")

    def client(name: str, streams: list[str], ssh_command: list[str] | None = None) -> str:
        return (
            f'[clients.{name}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {sshd.port}\n'
            f"ssh_command = {json.dumps(ssh_command or sshd.ssh_command())}\n"
            f"agent_command = {json.dumps(sshd.agent_command())}\n"
            f'sources = ["{src}"]\nstreams = [{", ".join(streams)}]\n\n'
        )

    failing = ["sh", "-c", "echo half a dump; echo 'pg_dump: error: disk full' >&2; exit 4"]
    old_agent = ["sh", "-c", f"exec {sys.executable} {FAKE_AGENT}", "fake-ssh"]
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        + client("db01", [
            _stream("sql/app.dump", [sys.executable, "-c", GENERATE]),
            _stream("sql/where-client", WHERE),
            _stream("sql/where-director", WHERE, on="director"),
        ])
        + client("brokenclient", [_stream("app.dump", failing)])
        + client("brokendirector", [_stream("app.dump", failing, on="director")])
        + client("oldagent", [_stream("app.dump", ["true"])], ssh_command=old_agent)
    )  # fmt: skip
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    return tmp_path


def _run(client: str) -> tuple[int, dict[str, object]]:
    r = cli("run", client, "--json")
    return r.code, json.loads(r.stdout.splitlines()[-1])


def _dump(path: str, client: str = "db01") -> bytes:
    r = cli("--repo", "main", "dump", "latest", "--client", client, path)
    assert r.code == 0, r.stderr
    return r.stdout_bytes


def test_streams_run_by_the_agent_and_by_the_director(fleet: Path) -> None:
    code, summary = _run("db01")
    assert code == 0, summary
    expected = random.Random(11).randbytes(SIZE)
    client_where, director_where = "ssh=yes client=\n", "ssh= client=db01\n"
    assert summary["bytes_read"] == (
        len("local all all peer\n") + SIZE + len(client_where) + len(director_where)
    )
    assert _dump("/stdin/sql/app.dump") == expected
    assert _dump("/stdin/sql/where-client").decode() == client_where
    assert _dump("/stdin/sql/where-director").decode() == director_where

    snaps = json.loads(cli("--repo", "main", "snapshots", "--json").stdout)
    assert snaps[0]["paths"] == [
        str(fleet / "remote-data"), "/stdin/sql/app.dump", "/stdin/sql/where-client",
        "/stdin/sql/where-director",
    ]  # fmt: skip
    ls = cli("--repo", "main", "ls", "latest", "/stdin/sql", "--json")
    assert ls.code == 0, ls.stderr
    entries = {e["path"]: (e["mode"], e["size"]) for e in json.loads(ls.stdout)}
    assert entries["/stdin/sql/app.dump"] == (0o600, SIZE)
    assert entries["/stdin/sql/where-director"] == (0o600, len(director_where))
    target = fleet / "restored"
    assert cli("--repo", "main", "restore", "latest", "--target", str(target)).code == 0
    assert (target / "stdin/sql/app.dump").read_bytes() == expected
    assert (target / "stdin/sql/where-director").read_text() == director_where
    assert cli("--repo", "main", "check", "--read-data").code == 0

    code, again = _run("db01")
    assert code == 0, again
    assert int(again["bytes_new"]) < 100_000  # type: ignore[call-overload]


def _assert_no_snapshot_and_failed(client: str) -> None:
    assert json.loads(cli("--repo", "main", "snapshots", "--json").stdout) == []
    status = json.loads(cli("status", "--json").stdout)
    last = {c["client"]: c["last_run"] for c in status["clients"]}[client]
    assert (last["status"], last["exit_code"]) == ("failed", 1)
    assert cli("--repo", "main", "check").code == 0


def test_a_stream_failing_on_the_client_fails_the_run(fleet: Path) -> None:
    code, summary = _run("brokenclient")
    assert code == 1, summary
    message = str(summary["message"])
    assert message.startswith("on the client: stream app.dump (command: sh -c")
    assert "exited with code 4" in message and "disk full" in message
    assert summary["snapshot_id"] is None
    _assert_no_snapshot_and_failed("brokenclient")


def test_a_stream_failing_on_the_director_fails_an_ssh_run(fleet: Path) -> None:
    code, summary = _run("brokendirector")
    assert code == 1, summary
    message = str(summary["message"])
    assert message.startswith("stream app.dump (command: sh -c")
    assert "exited with code 4" in message and "disk full" in message
    _assert_no_snapshot_and_failed("brokendirector")


def test_an_agent_that_predates_streams_is_not_sent_any(fleet: Path) -> None:
    code, summary = _run("oldagent")
    assert code == 1, summary
    assert "streams run on the client need 1.1" in str(summary["message"])
    assert "upgrade strongroom on the client" in str(summary["message"])
    assert not (fleet / "agent-saw.json").exists()  # no backup request reached it
    _assert_no_snapshot_and_failed("oldagent")


@pytest.mark.parametrize(
    ("streams", "code", "message"),
    [
        ("not a list", 1, "bad field 'streams'"),
        ([["x", ["true"]]], 1, "a stream is not a map"),
        ([{"name": "x", "command": "true"}], 1, "bad or missing field 'command'"),
        ([{"name": "x", "command": ["true", 1]}], 1, "malformed stream"),
        ([{"name": "x", "command": ["true"], "timeout": -5}], 1, "malformed stream"),
        ([{"name": "../x", "command": ["true"]}], 2, "relative path"),
    ],
)
def test_the_agent_refuses_malformed_streams(streams: Any, code: int, message: str) -> None:
    reader, writer = io.BytesIO(), io.BytesIO()
    write_frame(reader, {"op": "hello", "version": VERSION, "minor": MINOR})
    write_frame(reader, {
        "op": "backup", "paths": [], "client": "c", "job": "j", "id_key": bytes(32),
        "chunker": [256 * 1024, 1024 * 1024, 4096 * 1024, 0], "compression": 3,
        "streams": streams,
    })  # fmt: skip
    reader.seek(0)
    assert serve(reader, writer) == code
    writer.seek(0)
    assert read_frame(writer)["minor"] == MINOR
    failed = read_frame(writer)
    assert failed["op"] == "failed" and failed["exit_code"] == code
    assert message in failed["message"]
